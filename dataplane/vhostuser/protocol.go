package vhostuser

import (
	"encoding/binary"
	"fmt"
)

// Request codes of front-end messages (QEMU docs/interop/vhost-user.rst).
type Request uint32

const (
	ReqGetFeatures         Request = 1
	ReqSetFeatures         Request = 2
	ReqSetOwner            Request = 3
	ReqResetOwner          Request = 4
	ReqSetMemTable         Request = 5
	ReqSetLogBase          Request = 6
	ReqSetLogFD            Request = 7
	ReqSetVringNum         Request = 8
	ReqSetVringAddr        Request = 9
	ReqSetVringBase        Request = 10
	ReqGetVringBase        Request = 11
	ReqSetVringKick        Request = 12
	ReqSetVringCall        Request = 13
	ReqSetVringErr         Request = 14
	ReqGetProtocolFeatures Request = 15
	ReqSetProtocolFeatures Request = 16
	ReqGetQueueNum         Request = 17
	ReqSetVringEnable      Request = 18
	ReqSendRARP            Request = 19
	ReqNetSetMTU           Request = 20
	ReqSetBackendReqFD     Request = 21
	ReqIOTLBMsg            Request = 22
	ReqSetVringEndian      Request = 23
	ReqGetConfig           Request = 24
	ReqSetConfig           Request = 25
	ReqGetInflightFD       Request = 31
	ReqSetInflightFD       Request = 32
	ReqResetDevice         Request = 34
	ReqGetMaxMemSlots      Request = 36
	ReqAddMemReg           Request = 37
	ReqRemMemReg           Request = 38
	ReqSetStatus           Request = 39
	ReqGetStatus           Request = 40
)

var requestNames = map[Request]string{
	ReqGetFeatures: "GET_FEATURES", ReqSetFeatures: "SET_FEATURES",
	ReqSetOwner: "SET_OWNER", ReqResetOwner: "RESET_OWNER",
	ReqSetMemTable: "SET_MEM_TABLE", ReqSetLogBase: "SET_LOG_BASE",
	ReqSetLogFD: "SET_LOG_FD", ReqSetVringNum: "SET_VRING_NUM",
	ReqSetVringAddr: "SET_VRING_ADDR", ReqSetVringBase: "SET_VRING_BASE",
	ReqGetVringBase: "GET_VRING_BASE", ReqSetVringKick: "SET_VRING_KICK",
	ReqSetVringCall: "SET_VRING_CALL", ReqSetVringErr: "SET_VRING_ERR",
	ReqGetProtocolFeatures: "GET_PROTOCOL_FEATURES",
	ReqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	ReqGetQueueNum:         "GET_QUEUE_NUM", ReqSetVringEnable: "SET_VRING_ENABLE",
	ReqSendRARP: "SEND_RARP", ReqNetSetMTU: "NET_SET_MTU",
	ReqSetBackendReqFD: "SET_BACKEND_REQ_FD", ReqIOTLBMsg: "IOTLB_MSG",
	ReqSetVringEndian: "SET_VRING_ENDIAN", ReqGetConfig: "GET_CONFIG",
	ReqSetConfig: "SET_CONFIG", ReqGetInflightFD: "GET_INFLIGHT_FD",
	ReqSetInflightFD: "SET_INFLIGHT_FD", ReqResetDevice: "RESET_DEVICE",
	ReqGetMaxMemSlots: "GET_MAX_MEM_SLOTS", ReqAddMemReg: "ADD_MEM_REG",
	ReqRemMemReg: "REM_MEM_REG", ReqSetStatus: "SET_STATUS",
	ReqGetStatus: "GET_STATUS",
}

func (r Request) String() string {
	if n, ok := requestNames[r]; ok {
		return n
	}
	return fmt.Sprintf("REQUEST_%d", uint32(r))
}

// Protocol feature bits (VHOST_USER_PROTOCOL_F_*).
const (
	ProtocolFMQ                = 1 << 0
	ProtocolFLogShmfd          = 1 << 1
	ProtocolFRARP              = 1 << 2
	ProtocolFReplyAck          = 1 << 3
	ProtocolFMTU               = 1 << 4
	ProtocolFBackendReq        = 1 << 5
	ProtocolFCrossEndian       = 1 << 6
	ProtocolFConfig            = 1 << 9
	ProtocolFInflightShmfd     = 1 << 12
	ProtocolFResetDevice       = 1 << 13
	ProtocolFConfigureMemSlots = 1 << 15
	ProtocolFStatus            = 1 << 16
)

// Header flags.
const (
	FlagVersion     = 0x1
	FlagReply       = 0x4
	FlagNeedReply   = 0x8
	flagVersionMask = 0x3
)

// HeaderLen is the size of a message header: request, flags, size (u32 each).
const HeaderLen = 12

// MaxPayloadLen bounds a message payload; the largest defined payload is a
// memory table of 8 regions (8 + 8*32 bytes) or a config space read.
const MaxPayloadLen = 4096

// MaxMemRegions is the number of regions a SET_MEM_TABLE may carry.
const MaxMemRegions = 8

// VringNoFD is set in the u64 of SET_VRING_KICK/CALL/ERR when no file
// descriptor accompanies the message; the low byte is the vring index.
const (
	VringIndexMask = 0xff
	VringNoFD      = 1 << 8
)

// Header is a vhost-user message header. All fields are little-endian on
// the wire.
type Header struct {
	Request Request
	Flags   uint32
	Size    uint32
}

// Encode writes h into b[:HeaderLen].
func (h Header) Encode(b []byte) {
	_ = b[HeaderLen-1]
	binary.LittleEndian.PutUint32(b[0:], uint32(h.Request))
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
}

// DecodeHeader reads a header and checks its version and size.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("vhost-user header: %d bytes, want %d", len(b), HeaderLen)
	}
	h := Header{
		Request: Request(binary.LittleEndian.Uint32(b[0:])),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if h.Flags&flagVersionMask != FlagVersion {
		return h, fmt.Errorf("vhost-user %v: unsupported version in flags %#x", h.Request, h.Flags)
	}
	if h.Size > MaxPayloadLen {
		return h, fmt.Errorf("vhost-user %v: payload of %d bytes exceeds %d", h.Request, h.Size, MaxPayloadLen)
	}
	return h, nil
}

// MemRegion is one region of a memory table (struct VhostUserMemoryRegion).
type MemRegion struct {
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
	MmapOffset    uint64
}

// MemRegionLen is the encoded size of a MemRegion.
const MemRegionLen = 32

// VringState is the payload of SET_VRING_NUM/BASE, GET_VRING_BASE and
// SET_VRING_ENABLE.
type VringState struct {
	Index uint32
	Num   uint32
}

// VringAddr is the payload of SET_VRING_ADDR. Addresses are in the
// front-end's user address space (translated through UserspaceAddr).
type VringAddr struct {
	Index     uint32
	Flags     uint32
	DescUser  uint64
	UsedUser  uint64
	AvailUser uint64
	Log       uint64
}

// VringAddrLen is the encoded size of a VringAddr.
const VringAddrLen = 40
