package xsk

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type txq xdptx bpf/xdptx.c
