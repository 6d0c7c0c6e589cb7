package harness

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// procStat is what the bench reads from /proc/<pid>/stat.
type procStat struct {
	pgrp int
	// cpu is user plus system time, in clock ticks.
	cpu uint64
}

func readStat(pid int) (procStat, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name, in parentheses, may hold spaces: fields are
	// counted from the last ')'.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	// f[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	pgrp, err1 := strconv.Atoi(f[2])
	utime, err2 := strconv.ParseUint(f[11], 10, 64)
	stime, err3 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unparsable", pid)
	}
	return procStat{pgrp: pgrp, cpu: utime + stime}, nil
}

// groupPids lists the processes of process group pgid.
func groupPids(pgid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err == nil && st.pgrp == pgid {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// cpuTicks is the CPU time used so far by the processes of the groups.
func cpuTicks(pgids ...int) uint64 {
	var total uint64
	for _, g := range pgids {
		pids, _ := groupPids(g)
		for _, pid := range pids {
			if st, err := readStat(pid); err == nil {
				total += st.cpu
			}
		}
	}
	return total
}

// memKiB returns a field of /proc/<pid>/status in KiB: "VmHWM" (peak
// resident set) or "VmRSS" (resident set now).
func memKiB(pid int, field string) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// groupMemKiB sums field over the processes of the groups: for a server
// of several processes (nginx's master and workers, NSD's servers), the sum
// of their peaks bounds the peak of their sum from above.
func groupMemKiB(field string, pgids ...int) int64 {
	var total int64
	for _, g := range pgids {
		pids, _ := groupPids(g)
		for _, pid := range pids {
			if v, err := memKiB(pid, field); err == nil {
				total += v
			}
		}
	}
	return total
}
