package cpuset

import (
	"slices"
	"strings"
	"testing"
)

func TestParseFormat(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []int
		fmt  string
	}{
		{"0", []int{0}, "0"},
		{"0-3,8", []int{0, 1, 2, 3, 8}, "0-3,8"},
		{" 3, 1 ,2 ", []int{3, 1, 2}, "1-3"}, // order kept: worker i on the i-th
		{"5-5,7-9\n", []int{5, 7, 8, 9}, "5,7-9"},
	} {
		got, err := Parse(c.in)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("Parse(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
		if f := Format(got); f != c.fmt {
			t.Errorf("Format(%v) = %q, want %q", got, f, c.fmt)
		}
	}
	for in, msg := range map[string]string{
		"":      "empty",
		"1,1":   "listed twice",
		"0-2,1": "listed twice",
		"3-1":   "backwards",
		"a":     "not a CPU number",
		"-1":    "not a CPU number",
		"9000":  "not a CPU number",
		"1,":    "not a CPU number",
	} {
		if _, err := Parse(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("Parse(%q) = %v, want an error with %q", in, err, msg)
		}
	}
}

func TestParseStatus(t *testing.T) {
	st := "Name:\tvmqd\nUmask:\t0022\nCpus_allowed:\t2\nCpus_allowed_list:\t1\nMems_allowed_list:\t0\n"
	name, cpus, err := ParseStatus([]byte(st))
	if err != nil || name != "vmqd" || !slices.Equal(cpus, []int{1}) {
		t.Fatalf("ParseStatus = %q %v %v", name, cpus, err)
	}
	if _, _, err := ParseStatus([]byte("Name:\tx\n")); err == nil {
		t.Fatal("no Cpus_allowed_list: no error")
	}
}

func TestThreadsAndAllowed(t *testing.T) {
	all, err := Allowed()
	if err != nil || len(all) == 0 {
		t.Fatalf("Allowed = %v, %v", all, err)
	}
	th, err := Threads(0)
	if err != nil || len(th) == 0 {
		t.Fatalf("Threads = %v, %v", th, err)
	}
	for _, x := range th {
		for _, c := range x.CPUs {
			if !slices.Contains(all, c) {
				t.Errorf("thread %d (%s) may run on CPU %d, outside the process's %v", x.TID, x.Name, c, all)
			}
		}
	}
}
