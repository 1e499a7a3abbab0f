package mecha

import (
	"context"
	"errors"
	"fmt"
)

// Status is a response status code (SPEC §5). A Status is also an error, so
// the Err* sentinels below (which are Status values) work with errors.Is:
//
//	if errors.Is(err, mecha.ErrEtagMismatch) { … }
type Status uint16

// The status codes of SPEC §5.
const (
	StatusOK                 Status = 0
	StatusNotFound           Status = 1
	StatusEtagMismatch       Status = 2
	StatusInvalidArgument    Status = 3
	StatusUnknownOpcode      Status = 4
	StatusUnsupportedVersion Status = 5
	StatusPermissionDenied   Status = 6
	StatusResourceExhausted  Status = 7
	StatusUnavailable        Status = 8
	StatusDeadlineExceeded   Status = 9
	StatusInternal           Status = 10
	StatusUnsupported        Status = 11
)

// Sentinels for errors.Is, one per non-OK status. Every *StatusError matches
// the sentinel of its Status.
var (
	ErrNotFound           error = StatusNotFound
	ErrEtagMismatch       error = StatusEtagMismatch
	ErrInvalidArgument    error = StatusInvalidArgument
	ErrUnknownOpcode      error = StatusUnknownOpcode
	ErrUnsupportedVersion error = StatusUnsupportedVersion
	ErrPermissionDenied   error = StatusPermissionDenied
	ErrResourceExhausted  error = StatusResourceExhausted
	ErrUnavailable        error = StatusUnavailable
	ErrDeadlineExceeded   error = StatusDeadlineExceeded
	ErrInternal           error = StatusInternal
	ErrUnsupported        error = StatusUnsupported
)

var statusNames = [...]string{
	"OK", "NOT_FOUND", "ETAG_MISMATCH", "INVALID_ARGUMENT", "UNKNOWN_OPCODE",
	"UNSUPPORTED_VERSION", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
	"DEADLINE_EXCEEDED", "INTERNAL", "UNSUPPORTED",
}

// String returns the SPEC name, e.g. "NOT_FOUND".
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("STATUS_%d", uint16(s))
}

// Error makes a Status usable as an errors.Is target.
func (s Status) Error() string { return "mecha: " + s.String() }

// Retryable reports whether sending the same request again later may succeed
// (SPEC §5: only UNAVAILABLE).
func (s Status) Retryable() bool { return s == StatusUnavailable }

// StatusError is a non-OK answer from the daemon, or the client's own
// verdict where it stands in for one (a payload over max_frame, a deadline
// that passed with no answer).
type StatusError struct {
	// Status is the status code. A code this client does not know is
	// reported as StatusInternal, as SPEC §5 requires; Code keeps the original.
	Status Status
	// Code is the code as received (equal to Status unless it was unknown).
	Code uint16
	// Message is the daemon's explanation, for humans and logs: do not parse it.
	Message string
	// Opcode is the opcode of the request it answers (0 for SPEC §6.3/§6.4's
	// connection-fatal answers).
	Opcode uint16
}

// Error reads "mecha: OPCODE: STATUS: message".
func (e *StatusError) Error() string {
	return fmt.Sprintf("mecha: %s: %s: %s", opName(e.Opcode), e.Status.String(), e.Message)
}

// Is matches the sentinel (Status) of e's status, and lets a
// DEADLINE_EXCEEDED also match context.DeadlineExceeded, whichever side of
// the socket noticed the deadline first.
func (e *StatusError) Is(target error) bool {
	if s, ok := target.(Status); ok {
		return s == e.Status
	}
	return e.Status == StatusDeadlineExceeded && target == context.DeadlineExceeded
}

// Retryable reports whether the status is retryable (UNAVAILABLE).
func (e *StatusError) Retryable() bool { return e.Status.Retryable() }

// newStatusError builds the error for a non-OK answer, whose payload is
// always an ErrorBody (SPEC §5). An undecodable body still yields the status,
// which is the part that matters.
func newStatusError(h *header, payload []byte) *StatusError {
	e := &StatusError{Status: Status(h.status), Code: h.status, Opcode: h.opcode}
	var body ErrorBody
	if err := Unmarshal(payload, &body); err != nil {
		e.Message = fmt.Sprintf("(undecodable ErrorBody: %v)", err)
	} else {
		e.Message = body.Message
	}
	if int(h.status) >= len(statusNames) || h.status == 0 {
		e.Status = StatusInternal
		e.Message = fmt.Sprintf("unknown status %d: %s", h.status, e.Message)
	}
	return e
}

// ErrDaemonAbsent matches (errors.Is) the ConnectionError returned when
// nothing listens on the socket: it is missing or refuses connections.
var ErrDaemonAbsent = errors.New("mecha: daemon absent")

// ErrClosed is returned by calls on a Client after Close.
var ErrClosed = errors.New("mecha: client closed")

// ConnectionError reports that the daemon could not be reached or the
// connection was lost. Requests in flight on a lost connection may or may not
// have taken effect. The next call reconnects.
type ConnectionError struct {
	Path   string // the socket path
	Err    error  // the underlying error
	absent bool   // nothing listens at Path
}

// Error names the socket; for an absent daemon it asks "is mechad running?".
func (e *ConnectionError) Error() string {
	if e.absent {
		return fmt.Sprintf("mecha: cannot connect to mechad: is mechad running? socket: %s (%v)", e.Path, e.Err)
	}
	return fmt.Sprintf("mecha: connection to mechad at %s: %v", e.Path, e.Err)
}

// Unwrap returns the underlying error.
func (e *ConnectionError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrDaemonAbsent) true when nothing listens.
func (e *ConnectionError) Is(target error) bool { return e.absent && target == ErrDaemonAbsent }

// ProtocolError reports bytes from the daemon that break the ABI: an
// undecodable reply, bad magic, a frame answering the wrong opcode. It is a
// bug in the daemon or this client, never an expected outcome.
type ProtocolError struct {
	Reason string
}

// Error describes the violation.
func (e *ProtocolError) Error() string { return "mecha: protocol error: " + e.Reason }
