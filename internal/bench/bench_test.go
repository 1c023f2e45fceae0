package bench

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestBusyIsTheUnionOfSpans(t *testing.T) {
	t0 := time.Unix(0, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tm := times{spans: []span{
		{"a", at(50), at(60), false}, {"a", at(0), at(10), true}, {"b", at(5), at(20), false}, {"a", at(20), at(30), true}, {"b", at(55), at(58), true},
	}}
	if got := tm.busy(nil); got != 40*time.Millisecond {
		t.Fatalf("busy %v, want 40ms ([0,30] and [50,60])", got)
	}
	if got := tm.busy(func(s span) bool { return s.searched }); got != 23*time.Millisecond {
		t.Fatalf("busy searching %v, want 23ms ([0,10], [20,30] and [55,58])", got)
	}
	if got, want := tm.byType(), "a 30ms, b 18ms"; got != want {
		t.Fatalf("by type %q, want %q", got, want)
	}
}

// The longest gaps are where no span ran, between the pass's start and
// end, named by the spans around them, longest first.
func TestLongestGaps(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tm := times{spans: []span{
		{activity: "Plan", started: at(10), closed: at(50)},
		{activity: "Search", started: at(40), closed: at(100)}, // overlaps Plan
		{activity: "Merge", started: at(130), closed: at(150)},
	}}
	want := "50ms Merge → end at 150ms, 30ms Search → Merge at 100ms"
	if got := tm.longestGaps(at(0), at(200), 2); got != want {
		t.Errorf("longestGaps = %q, want %q", got, want)
	}
	if got := tm.longestGaps(at(0), at(200), 5); !strings.HasSuffix(got, "10ms start → Plan at 0s") {
		t.Errorf("all gaps: %q, want the start's last", got)
	}
}

func TestResults(t *testing.T) {
	rs := []Result{
		throughput("t", "images/s", 90, 100, 0.9),
		budget("b", "MiB", 2048, 1024),
		budget("zero", "%", 0, 5),
		info("i", "s", 12.345678, 0),
	}
	if rs[0].Ratio != 0.9 || !rs[0].Met() || rs[1].Ratio != 0.5 || rs[1].Met() || rs[2].Ratio != 1000 || rs[3].Value != 12.35 || !rs[3].Met() {
		t.Fatalf("%+v", rs)
	}
	var b bytes.Buffer
	if err := WriteTable(&b, rs); err != nil {
		t.Fatal(err)
	}
	if s := b.String(); !strings.Contains(s, "MISS") || !strings.Contains(s, "≥ 0.9") || !regexp.MustCompile(`(?m)^i +12.35 +s +- +- +- +$`).MatchString(s) {
		t.Fatalf("table:\n%s", s)
	}
}

// A ratio just under its goal does not round up to meet it.
func TestRatioRoundsDown(t *testing.T) {
	if r := throughput("x", "images/s", 89996, 100000, 0.9); r.Met() || r.Ratio != 0.8999 {
		t.Errorf("0.89996 of the baseline: ratio %v, met %v; want 0.8999, missed", r.Ratio, r.Met())
	}
	if r := budget("y", "ms/shard", 25.0001, 25); r.Met() {
		t.Errorf("25.0001 against a budget of 25: ratio %v, met", r.Ratio)
	}
	if r := throughput("z", "images/s", 90000, 100000, 0.9); !r.Met() {
		t.Errorf("exactly 0.9: ratio %v, missed", r.Ratio)
	}
	if r := throughput("w", "images/s", 70000, 100000, 0); r.Ratio != 0.7 {
		t.Errorf("exactly 0.7: ratio %v", r.Ratio)
	}
}

// The bench's private worker runs with a worker's defaults whatever the
// shell sets, and a worker that dies while the bench waits on it ends the
// wait, its log's end in the error (the log goes with the bench's folder).
func TestBenchWorker(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "worker")
	script := "#!/bin/sh\necho \"args: $*\"\necho \"env: DCD_EP=$DCD_EP TEMPORAL_NAMESPACE=$TEMPORAL_NAMESPACE DCD_CACHE=$DCD_CACHE\"\necho polling\nsleep 1\necho 'fatal error: out of memory'\nexit 3\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DCD_EP", "cuda")
	t.Setenv("TEMPORAL_NAMESPACE", "elsewhere")
	t.Setenv("DCD_CACHE", "/opt/dcd") // where the setup put ONNX Runtime: kept
	w, err := startWorker(context.Background(), Options{Dir: dir}, fake, "127.0.0.1:1", "file:///nowhere", "case")
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	ctx, cancel := w.watch(context.Background())
	defer cancel()
	select {
	case <-ctx.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the wait went on 20 s after the worker exited")
	}
	err = w.failed(ctx.Err())
	for _, want := range []string{"the worker exited (exit status 3)", "out of memory", "-namespace default", "-ep cpu", "env: DCD_EP= TEMPORAL_NAMESPACE= DCD_CACHE=/opt/dcd\n"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}
