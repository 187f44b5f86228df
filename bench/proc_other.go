//go:build !linux

package main

import (
	"syscall"
	"time"
)

func childAttr() *syscall.SysProcAttr { return nil }

// procCPU is not available here.
func procCPU(pid int) (time.Duration, bool) { return 0, false }
