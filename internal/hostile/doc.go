// Package hostile is a raw vhost-user front-end for tests that attack a
// back-end (vmqd): every step of the protocol is a separate call, so a
// test can stop half-way, reorder steps, send half a message, never read
// a reply, lay out rings with any descriptors it likes (loops, indirect
// tables, zero-length chains), shrink the memfd behind its memory, and
// hold its own kick and call eventfds in states a well-behaved guest
// never would (saturated, O_NONBLOCK cleared).
//
// Nothing here checks what the back-end does: that is the test's job.
// Unlike guest/frontend, which is a correct guest, this
// package does exactly what it is told.
//
// Safety for the test process itself: a Mem that has been truncated has
// already dropped its own mapping, so the test can never take the SIGBUS
// it hands to the back-end.
package hostile
