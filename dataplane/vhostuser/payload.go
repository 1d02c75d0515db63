package vhostuser

import (
	"encoding/binary"
	"fmt"
)

// Payload encoders and decoders shared by the back-end (this package) and
// the front-end (guest/frontend). Decoders check sizes exactly: a
// payload of the wrong length is a malformed message.

// U64Len is the size of the u64 payload (features, vring fd index, acks).
const U64Len = 8

// VringStateLen is the encoded size of a VringState.
const VringStateLen = 8

// MemTableHeaderLen is the size of the memory table header: nregions u32
// and padding u32.
const MemTableHeaderLen = 8

// ConfigHeaderLen is the size of the GET/SET_CONFIG header: offset, size,
// flags (u32 each), followed by size bytes of config space.
const ConfigHeaderLen = 12

// EncodeU64 writes v into b[:8].
func EncodeU64(b []byte, v uint64) { binary.LittleEndian.PutUint64(b, v) }

// DecodeU64 reads a u64 payload.
func DecodeU64(b []byte) (uint64, error) {
	if len(b) != U64Len {
		return 0, fmt.Errorf("u64 payload: %d bytes, want %d", len(b), U64Len)
	}
	return binary.LittleEndian.Uint64(b), nil
}

// Encode writes s into b[:VringStateLen].
func (s VringState) Encode(b []byte) {
	_ = b[VringStateLen-1]
	binary.LittleEndian.PutUint32(b[0:], s.Index)
	binary.LittleEndian.PutUint32(b[4:], s.Num)
}

// DecodeVringState reads a vring state payload.
func DecodeVringState(b []byte) (VringState, error) {
	if len(b) != VringStateLen {
		return VringState{}, fmt.Errorf("vring state payload: %d bytes, want %d", len(b), VringStateLen)
	}
	return VringState{Index: binary.LittleEndian.Uint32(b[0:]), Num: binary.LittleEndian.Uint32(b[4:])}, nil
}

// Encode writes a into b[:VringAddrLen].
func (a VringAddr) Encode(b []byte) {
	_ = b[VringAddrLen-1]
	binary.LittleEndian.PutUint32(b[0:], a.Index)
	binary.LittleEndian.PutUint32(b[4:], a.Flags)
	binary.LittleEndian.PutUint64(b[8:], a.DescUser)
	binary.LittleEndian.PutUint64(b[16:], a.UsedUser)
	binary.LittleEndian.PutUint64(b[24:], a.AvailUser)
	binary.LittleEndian.PutUint64(b[32:], a.Log)
}

// DecodeVringAddr reads a SET_VRING_ADDR payload.
func DecodeVringAddr(b []byte) (VringAddr, error) {
	if len(b) != VringAddrLen {
		return VringAddr{}, fmt.Errorf("vring addr payload: %d bytes, want %d", len(b), VringAddrLen)
	}
	return VringAddr{
		Index:     binary.LittleEndian.Uint32(b[0:]),
		Flags:     binary.LittleEndian.Uint32(b[4:]),
		DescUser:  binary.LittleEndian.Uint64(b[8:]),
		UsedUser:  binary.LittleEndian.Uint64(b[16:]),
		AvailUser: binary.LittleEndian.Uint64(b[24:]),
		Log:       binary.LittleEndian.Uint64(b[32:]),
	}, nil
}

// MemTableLen is the payload size of a memory table of n regions.
func MemTableLen(n int) int { return MemTableHeaderLen + n*MemRegionLen }

// EncodeMemTable writes a SET_MEM_TABLE payload into b, which must hold
// MemTableLen(len(regions)) bytes.
func EncodeMemTable(b []byte, regions []MemRegion) {
	_ = b[MemTableLen(len(regions))-1]
	binary.LittleEndian.PutUint32(b[0:], uint32(len(regions)))
	binary.LittleEndian.PutUint32(b[4:], 0)
	for i, r := range regions {
		o := MemTableHeaderLen + i*MemRegionLen
		binary.LittleEndian.PutUint64(b[o:], r.GuestPhysAddr)
		binary.LittleEndian.PutUint64(b[o+8:], r.MemorySize)
		binary.LittleEndian.PutUint64(b[o+16:], r.UserspaceAddr)
		binary.LittleEndian.PutUint64(b[o+24:], r.MmapOffset)
	}
}

// DecodeMemTable reads a SET_MEM_TABLE payload into dst (which must have
// room for MaxMemRegions) and returns the regions. It checks the count and
// the size, not the regions themselves (see the memory table).
func DecodeMemTable(b []byte, dst []MemRegion) ([]MemRegion, error) {
	if len(b) < MemTableHeaderLen {
		return nil, fmt.Errorf("memory table payload: %d bytes, want at least %d", len(b), MemTableHeaderLen)
	}
	n := binary.LittleEndian.Uint32(b[0:])
	if n == 0 || n > MaxMemRegions {
		return nil, fmt.Errorf("memory table: %d regions, want 1..%d", n, MaxMemRegions)
	}
	if len(b) != MemTableLen(int(n)) {
		return nil, fmt.Errorf("memory table of %d regions: %d bytes, want %d", n, len(b), MemTableLen(int(n)))
	}
	dst = dst[:0]
	for i := 0; i < int(n); i++ {
		o := MemTableHeaderLen + i*MemRegionLen
		dst = append(dst, MemRegion{
			GuestPhysAddr: binary.LittleEndian.Uint64(b[o:]),
			MemorySize:    binary.LittleEndian.Uint64(b[o+8:]),
			UserspaceAddr: binary.LittleEndian.Uint64(b[o+16:]),
			MmapOffset:    binary.LittleEndian.Uint64(b[o+24:]),
		})
	}
	return dst, nil
}

// ConfigRequest is the header of a GET_CONFIG / SET_CONFIG payload.
type ConfigRequest struct {
	Offset uint32
	Size   uint32
	Flags  uint32
}

// Encode writes c into b[:ConfigHeaderLen].
func (c ConfigRequest) Encode(b []byte) {
	_ = b[ConfigHeaderLen-1]
	binary.LittleEndian.PutUint32(b[0:], c.Offset)
	binary.LittleEndian.PutUint32(b[4:], c.Size)
	binary.LittleEndian.PutUint32(b[8:], c.Flags)
}

// DecodeConfig reads a GET/SET_CONFIG payload: the header and the config
// bytes that follow it (size bytes, which must all be present).
func DecodeConfig(b []byte) (ConfigRequest, []byte, error) {
	if len(b) < ConfigHeaderLen {
		return ConfigRequest{}, nil, fmt.Errorf("config payload: %d bytes, want at least %d", len(b), ConfigHeaderLen)
	}
	c := ConfigRequest{
		Offset: binary.LittleEndian.Uint32(b[0:]),
		Size:   binary.LittleEndian.Uint32(b[4:]),
		Flags:  binary.LittleEndian.Uint32(b[8:]),
	}
	if uint64(len(b)-ConfigHeaderLen) != uint64(c.Size) {
		return c, nil, fmt.Errorf("config payload: %d bytes of config, header says %d", len(b)-ConfigHeaderLen, c.Size)
	}
	return c, b[ConfigHeaderLen:], nil
}

// Config space of a virtio-net device (virtio 1.1, 5.1.4), as far as vmq
// fills it: mac[6], status u16, max_virtqueue_pairs u16, mtu u16.
const (
	NetConfigMACOff              = 0
	NetConfigStatusOff           = 6
	NetConfigMaxQPairsOff        = 8
	NetConfigMTUOff              = 10
	NetConfigLen                 = 12
	VringFlagLog                 = 1 // VringAddr.Flags: log the used ring at VringAddr.Log
	ReplyFlags                   = FlagReply | FlagVersion
	ReplyAckOK            uint64 = 0
	ReplyAckFailed        uint64 = 1
)
