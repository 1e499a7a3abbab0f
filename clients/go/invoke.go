// Service invocation payloads (SPEC §7.8): the invoke family, the module
// link's LINK_DELIVER and the peer-link frames, so every golden vector is
// replayed. Calls themselves are not yet offered by this client's API.

package mecha

// Opcodes of the invoke family, LINK_DELIVER and the peer family (SPEC §3).
const (
	OpInvokeRegister uint16 = 0x0701
	OpInvoke         uint16 = 0x0702
	OpInvokeApps     uint16 = 0x0703
	OpInvokeCall     uint16 = 0x0704
	OpLinkDeliver    uint16 = 0xF005
	OpPeerHello      uint16 = 0xF101
	OpPeerAnnounce   uint16 = 0xF102
	OpPeerInvoke     uint16 = 0xF103
)

func init() {
	invokeReply := func() Message { return &InvokeReply{} }
	opTable[OpInvokeRegister] = opInfo{"INVOKE_REGISTER", func() Message { return &RegisterRequest{} }, func() Message { return &RegisterReply{} }, nil}
	opTable[OpInvoke] = opInfo{"INVOKE", func() Message { return &InvokeRequest{} }, invokeReply, nil}
	opTable[OpInvokeApps] = opInfo{"INVOKE_APPS", nil, func() Message { return &AppsReply{} }, nil}
	opTable[OpInvokeCall] = opInfo{"INVOKE_CALL", func() Message { return &InvokeCall{} }, invokeReply, nil}
	opTable[OpLinkDeliver] = opInfo{"LINK_DELIVER", func() Message { return &LinkDeliver{} }, invokeReply, nil}
	opTable[OpPeerHello] = opInfo{"PEER_HELLO", func() Message { return &PeerHello{} }, func() Message { return &PeerHello{} }, nil}
	opTable[OpPeerAnnounce] = opInfo{"PEER_ANNOUNCE", func() Message { return &PeerAnnounce{} }, nil, nil}
	opTable[OpPeerInvoke] = opInfo{"PEER_INVOKE", func() Message { return &InvokeCall{} }, invokeReply, nil}
}

// RegisterRequest is INVOKE_REGISTER: serve an app id (opens a stream).
type RegisterRequest struct {
	AppID   string
	Methods []string
}

func (m *RegisterRequest) encode(e *encoder) { e.str(m.AppID); e.strs(m.Methods) }
func (m *RegisterRequest) decode(d *decoder) { m.AppID = d.str(); m.Methods = d.strs() }

// RegisterReply opens the registration stream.
type RegisterReply struct {
	AppID string
	Node  string
}

func (m *RegisterReply) encode(e *encoder) { e.str(m.AppID); e.str(m.Node) }
func (m *RegisterReply) decode(d *decoder) { m.AppID = d.str(); m.Node = d.str() }

// InvokeRequest is INVOKE: call a method of an app by app id.
type InvokeRequest struct {
	AppID       string
	Method      string
	Data        []byte
	ContentType string
	Metadata    []Pair
	CallerAppID string
	TraceParent string
}

func (m *InvokeRequest) encode(e *encoder) {
	e.str(m.AppID)
	e.str(m.Method)
	e.bytes(m.Data)
	e.str(m.ContentType)
	e.pairs(m.Metadata)
	e.str(m.CallerAppID)
	e.str(m.TraceParent)
}

func (m *InvokeRequest) decode(d *decoder) {
	m.AppID = d.str()
	m.Method = d.str()
	m.Data = d.bytes()
	m.ContentType = d.str()
	m.Metadata = d.pairs()
	m.CallerAppID = d.str()
	m.TraceParent = d.str()
}

// InvokeReply is the callee's answer.
type InvokeReply struct {
	Data        []byte
	ContentType string
	Metadata    []Pair
}

func (m *InvokeReply) encode(e *encoder) { e.bytes(m.Data); e.str(m.ContentType); e.pairs(m.Metadata) }
func (m *InvokeReply) decode(d *decoder) {
	m.Data = d.bytes()
	m.ContentType = d.str()
	m.Metadata = d.pairs()
}

// InvokeCall is one call as delivered to the callee (INVOKE_CALL, PEER_INVOKE).
type InvokeCall struct {
	AppID        string
	Method       string
	Data         []byte
	ContentType  string
	Metadata     []Pair
	CallerAppID  string
	CallerTenant string
	CallerNode   string
	TraceParent  string
}

func (m *InvokeCall) encode(e *encoder) {
	e.str(m.AppID)
	e.str(m.Method)
	e.bytes(m.Data)
	e.str(m.ContentType)
	e.pairs(m.Metadata)
	e.str(m.CallerAppID)
	e.str(m.CallerTenant)
	e.str(m.CallerNode)
	e.str(m.TraceParent)
}

func (m *InvokeCall) decode(d *decoder) {
	m.AppID = d.str()
	m.Method = d.str()
	m.Data = d.bytes()
	m.ContentType = d.str()
	m.Metadata = d.pairs()
	m.CallerAppID = d.str()
	m.CallerTenant = d.str()
	m.CallerNode = d.str()
	m.TraceParent = d.str()
}

// AppEntry is one app id reachable from a node.
type AppEntry struct {
	AppID     string
	Node      string
	Local     bool
	Instances uint32
}

// AppsReply is the OK answer to INVOKE_APPS.
type AppsReply struct {
	Apps []AppEntry
}

func (m *AppsReply) encode(e *encoder) {
	e.u64(uint64(len(m.Apps)))
	for _, a := range m.Apps {
		e.str(a.AppID)
		e.str(a.Node)
		e.boolean(a.Local)
		e.u32(a.Instances)
	}
}

func (m *AppsReply) decode(d *decoder) {
	if n := d.count(21); n > 0 {
		m.Apps = make([]AppEntry, n)
		for i := 0; i < n && d.err == nil; i++ {
			m.Apps[i].AppID = d.str()
			m.Apps[i].Node = d.str()
			m.Apps[i].Local = d.boolean()
			m.Apps[i].Instances = d.u32()
		}
	}
}

// LinkDeliver is a module's request to deliver a request on an app's connection.
type LinkDeliver struct {
	Stream  uint32
	Opcode  uint16
	Payload []byte
}

func (m *LinkDeliver) encode(e *encoder) { e.u32(m.Stream); e.u16(m.Opcode); e.bytes(m.Payload) }
func (m *LinkDeliver) decode(d *decoder) {
	m.Stream = d.u32()
	m.Opcode = d.u16()
	m.Payload = d.bytes()
}

// PeerHello is the first frame each way of a peer link.
type PeerHello struct {
	Version uint8
	Node    string
}

func (m *PeerHello) encode(e *encoder) { e.u8(m.Version); e.str(m.Node) }
func (m *PeerHello) decode(d *decoder) { m.Version = d.u8(); m.Node = d.str() }

// PeerAnnounce lists the app ids a node serves.
type PeerAnnounce struct {
	Node string
	Apps []string
}

func (m *PeerAnnounce) encode(e *encoder) { e.str(m.Node); e.strs(m.Apps) }
func (m *PeerAnnounce) decode(d *decoder) { m.Node = d.str(); m.Apps = d.strs() }
