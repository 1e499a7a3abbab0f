package mecha

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// Message is one payload type of SPEC §4.1. Every type in this package whose
// name is a SPEC type name (Hello, GetRequest, StateEntry, …) implements it
// through its pointer. The interface is sealed: the encoding is defined by the
// SPEC, not by callers.
type Message interface {
	encode(e *encoder)
	decode(d *decoder)
}

// Marshal returns the wire encoding of m (SPEC §4).
func Marshal(m Message) []byte {
	e := encoder{}
	m.encode(&e)
	return e.b
}

// Unmarshal decodes payload into m, which must consume it exactly (SPEC §4
// "Exact consumption"). Strings, bools, Option tags and enum indexes are
// checked; a length or count prefix is checked against the remaining bytes
// before anything is allocated for it. The []byte fields of m share payload's
// memory.
func Unmarshal(payload []byte, m Message) error {
	d := decoder{b: payload}
	m.decode(&d)
	return d.finish()
}

// DecodeError is returned for a payload that does not decode as its type.
type DecodeError struct {
	Offset int    // byte offset in the payload where decoding failed
	Reason string // what was wrong
}

// Error describes where and why decoding failed.
func (e *DecodeError) Error() string {
	return fmt.Sprintf("mecha: undecodable payload at byte %d: %s", e.Offset, e.Reason)
}

// encoder appends SPEC §4 encodings to a byte slice. Encoding cannot fail:
// every Go value of the payload types has an encoding.
type encoder struct{ b []byte }

func (e *encoder) u8(v uint8) { e.b = append(e.b, v) }

func (e *encoder) u16(v uint16) { e.b = binary.LittleEndian.AppendUint16(e.b, v) }

func (e *encoder) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }

func (e *encoder) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }

func (e *encoder) boolean(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

// str encodes a String. Go strings may hold invalid UTF-8; the daemon rejects
// such a payload with INVALID_ARGUMENT, which is the right place to report it.
func (e *encoder) str(s string) {
	e.u64(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) bytes(v []byte) {
	e.u64(uint64(len(v)))
	e.b = append(e.b, v...)
}

func (e *encoder) strs(v []string) {
	e.u64(uint64(len(v)))
	for _, s := range v {
		e.str(s)
	}
}

func (e *encoder) optStr(v *string) {
	if v == nil {
		e.u8(0)
		return
	}
	e.u8(1)
	e.str(*v)
}

func (e *encoder) optU64(v *uint64) {
	if v == nil {
		e.u8(0)
		return
	}
	e.u8(1)
	e.u64(*v)
}

func (e *encoder) pairs(v []Pair) {
	e.u64(uint64(len(v)))
	for _, p := range v {
		e.str(p.Key)
		e.str(p.Value)
	}
}

// decoder reads SPEC §4 encodings. The first error sticks: later reads return
// zero values, so a type's decode method is straight-line code, and finish
// reports the error (or trailing bytes).
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(format string, args ...interface{}) {
	if d.err == nil {
		d.err = &DecodeError{Offset: d.off, Reason: fmt.Sprintf(format, args...)}
	}
}

func (d *decoder) remaining() int { return len(d.b) - d.off }

// take returns the next n bytes, or nil after recording a truncation.
func (d *decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n > d.remaining() {
		d.fail("%s needs %d bytes, %d left", what, n, d.remaining())
		return nil
	}
	v := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return v
}

func (d *decoder) u8() uint8 {
	if v := d.take(1, "u8"); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if v := d.take(2, "u16"); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.take(4, "u32"); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.take(8, "u64"); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) boolean() bool {
	switch b := d.u8(); b {
	case 0:
		return false
	case 1:
		return true
	default:
		d.off--
		d.fail("bool byte %#02x is neither 00 nor 01", b)
		return false
	}
}

// tag reads an Option tag: false for None, true for Some.
func (d *decoder) tag() bool {
	switch t := d.u8(); t {
	case 0:
		return false
	case 1:
		return true
	default:
		d.off--
		d.fail("Option tag %#02x is neither 00 nor 01", t)
		return false
	}
}

// length reads a String/bytes length prefix and checks it against the bytes
// that remain, so a hostile prefix never sizes an allocation.
func (d *decoder) length(what string) int {
	n := d.u64()
	if d.err != nil {
		return 0
	}
	if n > uint64(d.remaining()) {
		d.off -= 8
		d.fail("%s length %d exceeds the %d bytes left", what, n, d.remaining()-8)
		return 0
	}
	return int(n)
}

// count reads a Vec count. Each element needs at least minSize bytes on the
// wire (every element type here is at least 1 byte), so a count that cannot
// fit in the remaining bytes is rejected before a slice of that size exists.
func (d *decoder) count(minSize int) int {
	n := d.u64()
	if d.err != nil {
		return 0
	}
	if n > uint64(d.remaining()/minSize) {
		d.off -= 8
		d.fail("count %d cannot fit in the %d bytes left", n, d.remaining()-8)
		return 0
	}
	return int(n)
}

func (d *decoder) str() string {
	v := d.take(d.length("String"), "String")
	if d.err != nil {
		return ""
	}
	if !utf8.Valid(v) {
		d.off -= len(v)
		d.fail("String is not valid UTF-8")
		return ""
	}
	return string(v)
}

// bytes returns a non-nil slice (empty for a zero length) sharing the payload.
func (d *decoder) bytes() []byte {
	v := d.take(d.length("bytes"), "bytes")
	if d.err != nil {
		return nil
	}
	return v
}

func (d *decoder) strs() []string {
	n := d.count(8)
	if n == 0 {
		return nil
	}
	v := make([]string, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		v = append(v, d.str())
	}
	return v
}

func (d *decoder) optStr() *string {
	if !d.tag() {
		return nil
	}
	s := d.str()
	return &s
}

func (d *decoder) optU64() *uint64 {
	if !d.tag() {
		return nil
	}
	v := d.u64()
	return &v
}

func (d *decoder) pairs() []Pair {
	n := d.count(16)
	if n == 0 {
		return nil
	}
	v := make([]Pair, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		k := d.str()
		v = append(v, Pair{Key: k, Value: d.str()})
	}
	return v
}

// variant reads an enum index and checks it is below n.
func (d *decoder) variant(typ string, n uint32) uint32 {
	v := d.u32()
	if d.err == nil && v >= n {
		d.off -= 4
		d.fail("%s variant index %d is undefined", typ, v)
	}
	return v
}

func (d *decoder) finish() error {
	if d.err == nil && d.off != len(d.b) {
		d.fail("%d trailing bytes after the value", len(d.b)-d.off)
	}
	return d.err
}
