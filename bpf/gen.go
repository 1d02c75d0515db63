package bpf

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type filter_key -type filter_config -type vm_counters -type global_counters filter filter.c
