package dataplane

// vmState is one VM as one worker sees it (placeholder until worker.go).
type vmState struct {
	mac  MAC
	vlan uint16
}
