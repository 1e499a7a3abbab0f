package mecha

import (
	"encoding/binary"
	"fmt"
)

// ABIVersion is the ABI version this client speaks (HELLO sends 1..1).
const ABIVersion = 1

// HeaderSize is the size of every frame header (SPEC §2).
const HeaderSize = 24

// Header flag bits (SPEC §2).
const (
	FlagResponse = 0x01 // set on every response
	FlagStream   = 0x02 // on a response: opened a stream; without RESPONSE: a push
	FlagEnd      = 0x04 // with STREAM: the last frame of the stream
)

// maxIncoming bounds the payloads this client accepts. SPEC §7.7.2: a client
// SHOULD accept answers up to 64 MiB, the largest max_frame; anything larger
// can only be a corrupt stream, so the connection is dropped before
// allocating.
const maxIncoming = 64 << 20

var magic = [4]byte{'M', 'C', 'H', 'A'}

// Opcodes of SPEC §3.
const (
	OpHello           uint16 = 0x0001
	OpPing            uint16 = 0x0002
	OpStatus          uint16 = 0x0003
	OpModuleRestart   uint16 = 0x0004
	OpDaemonUpgrade   uint16 = 0x0007
	OpReload          uint16 = 0x0005
	OpStreamCancel    uint16 = 0x0006
	OpStateGet        uint16 = 0x0101
	OpStateSet        uint16 = 0x0102
	OpStateDelete     uint16 = 0x0103
	OpStateBulkGet    uint16 = 0x0104
	OpStateBulkSet    uint16 = 0x0105
	OpStateTransact   uint16 = 0x0106
	OpPubsubPublish   uint16 = 0x0201
	OpPubsubSubscribe uint16 = 0x0202
	OpPubsubAck       uint16 = 0x0203
	OpLockTryLock     uint16 = 0x0301
	OpLockUnlock      uint16 = 0x0302
	OpLockExtend      uint16 = 0x0303
	OpSeqNext         uint16 = 0x0401
	OpConfigGet       uint16 = 0x0501
	OpConfigSubscribe uint16 = 0x0502
	OpConfigSet       uint16 = 0x0503
	OpSecretGet       uint16 = 0x0601
	OpSecretBulkGet   uint16 = 0x0602
	OpLinkHello       uint16 = 0xF001
	OpLinkPing        uint16 = 0xF002
	OpLinkDrain       uint16 = 0xF003
	OpLinkCancel      uint16 = 0xF004
)

// opInfo is one row of SPEC §3's opcode table: the name and how to make the
// request, OK-reply and (for the operations that open a stream) push payload
// types; nil = empty payload.
type opInfo struct {
	name             string
	req, reply, push func() Message
}

// opTable holds every opcode SPEC §3 defines. The tests compare it with the
// SPEC row by row, so an opcode added to the SPEC without support here fails
// them.
var opTable = map[uint16]opInfo{
	OpHello:           {"HELLO", func() Message { return &Hello{} }, func() Message { return &HelloReply{} }, nil},
	OpPing:            {"PING", nil, nil, nil},
	OpStatus:          {"STATUS", nil, func() Message { return &StatusReply{} }, nil},
	OpModuleRestart:   {"MODULE_RESTART", func() Message { return &ModuleRestartRequest{} }, func() Message { return &ModuleRestartReply{} }, nil},
	OpDaemonUpgrade:   {"DAEMON_UPGRADE", func() Message { return &DaemonUpgradeRequest{} }, func() Message { return &DaemonUpgradeReply{} }, nil},
	OpReload:          {"RELOAD", nil, func() Message { return &ReloadReply{} }, nil},
	OpStreamCancel:    {"STREAM_CANCEL", func() Message { return &StreamCancel{} }, nil, nil},
	OpStateGet:        {"STATE_GET", func() Message { return &GetRequest{} }, func() Message { return &StateEntry{} }, nil},
	OpStateSet:        {"STATE_SET", func() Message { return &SetRequest{} }, func() Message { return &SetReply{} }, nil},
	OpStateDelete:     {"STATE_DELETE", func() Message { return &DeleteRequest{} }, func() Message { return &DeleteReply{} }, nil},
	OpStateBulkGet:    {"STATE_BULK_GET", func() Message { return &BulkGetRequest{} }, func() Message { return &BulkGetReply{} }, nil},
	OpStateBulkSet:    {"STATE_BULK_SET", func() Message { return &BulkSetRequest{} }, func() Message { return &TransactReply{} }, nil},
	OpStateTransact:   {"STATE_TRANSACT", func() Message { return &TransactRequest{} }, func() Message { return &TransactReply{} }, nil},
	OpPubsubPublish:   {"PUBSUB_PUBLISH", func() Message { return &PublishRequest{} }, func() Message { return &PublishReply{} }, nil},
	OpPubsubSubscribe: {"PUBSUB_SUBSCRIBE", func() Message { return &SubscribeRequest{} }, func() Message { return &SubscribeReply{} }, func() Message { return &Delivery{} }},
	OpPubsubAck:       {"PUBSUB_ACK", func() Message { return &AckRequest{} }, func() Message { return &AckReply{} }, nil},
	OpLockTryLock:     {"LOCK_TRY_LOCK", func() Message { return &TryLockRequest{} }, func() Message { return &TryLockReply{} }, nil},
	OpLockUnlock:      {"LOCK_UNLOCK", func() Message { return &UnlockRequest{} }, func() Message { return &UnlockReply{} }, nil},
	OpLockExtend:      {"LOCK_EXTEND", func() Message { return &ExtendLockRequest{} }, func() Message { return &ExtendLockReply{} }, nil},
	OpSeqNext:         {"SEQ_NEXT", func() Message { return &NextIdRequest{} }, func() Message { return &NextIdReply{} }, nil},
	OpConfigGet:       {"CONFIG_GET", func() Message { return &ConfigGetRequest{} }, func() Message { return &ConfigGetReply{} }, nil},
	OpConfigSubscribe: {"CONFIG_SUBSCRIBE", func() Message { return &ConfigSubscribeRequest{} }, func() Message { return &ConfigGetReply{} }, func() Message { return &ConfigUpdate{} }},
	OpConfigSet:       {"CONFIG_SET", func() Message { return &ConfigSetRequest{} }, func() Message { return &ConfigSetReply{} }, nil},
	OpSecretGet:       {"SECRET_GET", func() Message { return &SecretGetRequest{} }, func() Message { return &SecretReply{} }, nil},
	OpSecretBulkGet:   {"SECRET_BULK_GET", func() Message { return &SecretBulkGetRequest{} }, func() Message { return &SecretBulkReply{} }, nil},
	OpLinkHello:       {"LINK_HELLO", func() Message { return &LinkHello{} }, func() Message { return &LinkReady{} }, nil},
	OpLinkPing:        {"LINK_PING", nil, nil, nil},
	OpLinkDrain:       {"LINK_DRAIN", nil, nil, nil},
	OpLinkCancel:      {"LINK_CANCEL", nil, nil, nil},
}

// opName names an opcode for error messages.
func opName(op uint16) string {
	if info, ok := opTable[op]; ok {
		return info.name
	}
	return fmt.Sprintf("opcode %#06x", op)
}

// header is the 24-byte frame header without its constant magic.
type header struct {
	version    uint8
	flags      uint8
	opcode     uint16
	requestID  uint32
	status     uint16
	ext        uint16
	deadlineMs uint32
	payloadLen uint32
}

// appendTo appends the encoded header to b.
func (h *header) appendTo(b []byte) []byte {
	b = append(b, magic[:]...)
	b = append(b, h.version, h.flags)
	b = binary.LittleEndian.AppendUint16(b, h.opcode)
	b = binary.LittleEndian.AppendUint32(b, h.requestID)
	b = binary.LittleEndian.AppendUint16(b, h.status)
	b = binary.LittleEndian.AppendUint16(b, h.ext)
	b = binary.LittleEndian.AppendUint32(b, h.deadlineMs)
	return binary.LittleEndian.AppendUint32(b, h.payloadLen)
}

// parseHeader decodes a header; bad magic is an error because nothing after
// it can be trusted (SPEC §6.3).
func parseHeader(b []byte) (header, error) {
	if len(b) < HeaderSize {
		return header{}, fmt.Errorf("header needs %d bytes, got %d", HeaderSize, len(b))
	}
	if [4]byte{b[0], b[1], b[2], b[3]} != magic {
		return header{}, fmt.Errorf("bad magic % x, expected \"MCHA\"", b[:4])
	}
	return header{
		version:    b[4],
		flags:      b[5],
		opcode:     binary.LittleEndian.Uint16(b[6:]),
		requestID:  binary.LittleEndian.Uint32(b[8:]),
		status:     binary.LittleEndian.Uint16(b[12:]),
		ext:        binary.LittleEndian.Uint16(b[14:]),
		deadlineMs: binary.LittleEndian.Uint32(b[16:]),
		payloadLen: binary.LittleEndian.Uint32(b[20:]),
	}, nil
}

// requestFrame builds a whole request frame: a header with RESPONSE, STREAM,
// END, status and ext all zero (SPEC §6.5), then payload.
func requestFrame(version uint8, opcode uint16, id, deadlineMs uint32, payload []byte) []byte {
	h := header{version: version, opcode: opcode, requestID: id, deadlineMs: deadlineMs, payloadLen: uint32(len(payload))}
	return append(h.appendTo(make([]byte, 0, HeaderSize+len(payload))), payload...)
}
