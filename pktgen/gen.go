package pktgen

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type gen_config -type gen_dst -type gen_state -type sink_config -type sink_stats pktgenBPF bpf/pktgen.c
