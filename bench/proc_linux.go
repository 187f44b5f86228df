package main

import "syscall"

// childAttr makes a server started by the harness die with it, even when
// the harness is killed before it can stop them.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
