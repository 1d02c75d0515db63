package bpf

import "encoding/binary"

// Verdict is an XDP action code, as the program returns it.
type Verdict uint32

// The XDP verdicts the filter returns.
const (
	VerdictDrop     Verdict = 1 // XDP_DROP
	VerdictPass     Verdict = 2 // XDP_PASS
	VerdictRedirect Verdict = 4 // XDP_REDIRECT
)

func (v Verdict) String() string {
	switch v {
	case 0:
		return "XDP_ABORTED"
	case VerdictDrop:
		return "XDP_DROP"
	case VerdictPass:
		return "XDP_PASS"
	case 3:
		return "XDP_TX"
	case VerdictRedirect:
		return "XDP_REDIRECT"
	}
	return "XDP_UNKNOWN"
}

// Outcome says which global counter a frame bumps; exactly one per frame.
type Outcome int

// Outcomes, one per outcome counter of GlobalCounters.
const (
	OutcomeRedirected Outcome = iota
	OutcomePassed
	OutcomeFlooded
	OutcomeFloodPassed
	OutcomeMalformed
	OutcomeNoSocket
	OutcomeBadQueue
	OutcomeBadSlot
)

var outcomeNames = [...]string{"redirected", "passed", "flooded", "flood-passed", "malformed", "no-socket", "bad-queue", "bad-slot"}

func (o Outcome) String() string {
	if o >= 0 && int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

// Model is a pure-Go model of the XDP program's decision, kept in step
// with filter.c (the fuzz test holds them to each other).
type Model struct {
	MaxVMs, MaxQueues uint32
	Malformed         Action
	NoSocket          Action
	// Filters maps keys to slots; a slot outside 1..MaxVMs is BadSlot.
	Filters map[Key]uint32
	// Sockets holds the XSKMAP indices that hold a socket.
	Sockets map[uint32]bool
}

// Decision is what the program does with one frame.
type Decision struct {
	Verdict Verdict
	Outcome Outcome
	// Slot is the VM slot of a matched unicast frame (0 otherwise).
	Slot uint32
	// Index is the XSKMAP index redirected to (valid for XDP_REDIRECT).
	Index uint32
}

// ParseKey extracts the filter key of a frame: its destination MAC and the
// VLAN id of its outer 802.1Q or 802.1ad tag (0 if untagged). ok is false
// for a frame shorter than an Ethernet header or with a truncated tag.
func ParseKey(frame []byte) (k Key, ok bool) {
	if len(frame) < 14 {
		return k, false
	}
	copy(k.MAC[:], frame[:6])
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x8100, 0x88a8:
		if len(frame) < 18 {
			return k, false
		}
		k.VLAN = binary.BigEndian.Uint16(frame[14:16]) & 0x0fff
	}
	return k, true
}

func (m *Model) verdict(a Action) Verdict {
	if a == Drop {
		return VerdictDrop
	}
	return VerdictPass
}

// Classify decides a frame received on rxQueue.
func (m *Model) Classify(frame []byte, rxQueue uint32) Decision {
	k, ok := ParseKey(frame)
	if !ok {
		return Decision{Verdict: m.verdict(m.Malformed), Outcome: OutcomeMalformed}
	}
	if k.MAC[0]&1 != 0 {
		if rxQueue >= m.MaxQueues {
			return Decision{Verdict: VerdictPass, Outcome: OutcomeBadQueue}
		}
		if m.Sockets[rxQueue] {
			return Decision{Verdict: VerdictRedirect, Outcome: OutcomeFlooded, Index: rxQueue}
		}
		return Decision{Verdict: VerdictPass, Outcome: OutcomeFloodPassed}
	}
	slot, found := m.Filters[k]
	if !found {
		return Decision{Verdict: VerdictPass, Outcome: OutcomePassed}
	}
	if slot == 0 || slot > m.MaxVMs {
		return Decision{Verdict: m.verdict(m.NoSocket), Outcome: OutcomeBadSlot}
	}
	if rxQueue >= m.MaxQueues {
		return Decision{Verdict: m.verdict(m.NoSocket), Outcome: OutcomeBadQueue, Slot: slot}
	}
	idx := slot*m.MaxQueues + rxQueue
	if m.Sockets[idx] {
		return Decision{Verdict: VerdictRedirect, Outcome: OutcomeRedirected, Slot: slot, Index: idx}
	}
	return Decision{Verdict: m.verdict(m.NoSocket), Outcome: OutcomeNoSocket, Slot: slot}
}

// PendingBit is the bit of the pending bitmap (word index in the whole
// map, bit within it) that the program sets for decision d of a frame on
// queue: the socket it redirected to. ok is false when nothing was
// redirected, and the program then sets no bit.
func (m *Model) PendingBit(d Decision, queue uint32) (word uint32, bit uint64, ok bool) {
	if d.Verdict != VerdictRedirect {
		return 0, 0, false
	}
	return queue*uint32(PendingWords(int(m.MaxVMs))) + d.Slot/64, 1 << (d.Slot % 64), true
}
