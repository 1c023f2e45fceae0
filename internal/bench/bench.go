// Package bench measures DCD where its cost grows with the pool: embedding,
// the k-NN scan and merge, and a pass's orchestration. `starter bench` runs
// it; README's Performance section holds the latest numbers.
//
// Each measurement is paired with a baseline run side by side in the same
// process (interleaved, best of a few repetitions), so the ratio holds on a
// noisy shared machine even when the absolute numbers move. A Result's Ratio
// is oriented so that higher is better and Goal is the least ratio that
// meets the target: for a throughput, value/baseline; for a budget (peak
// RSS, ms per shard), baseline is the budget and the ratio budget/value.
//
// # Errors
//
// Run fails when ONNX Runtime cannot be loaded, the Temporal CLI is missing
// (the pass, orchestration and pack parts start a private dev server), the
// worker binary cannot be built, or a measured run itself fails.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"dcd/activities"
)

// Result is one measurement beside its baseline.
type Result struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Baseline float64 `json:"baseline"`
	// Ratio compares Value with Baseline, higher is better.
	Ratio float64 `json:"ratio"`
	// Goal is the least Ratio that meets the target; 0 when there is none
	// (the result is informative).
	Goal float64 `json:"goal"`
}

// Met reports whether the result meets its goal (true when it has none).
func (r Result) Met() bool { return r.Goal == 0 || r.Ratio >= r.Goal }

// throughput is a higher-is-better result against its baseline.
func throughput(name, unit string, value, baseline, goal float64) Result {
	return Result{Name: name, Value: round(value), Unit: unit, Baseline: round(baseline), Ratio: roundDown(ratio(value, baseline)), Goal: goal}
}

// budget is a lower-is-better result against the most it may be; the
// ratio is capped at 1000 (a value near 0).
func budget(name, unit string, value, limit float64) Result {
	return Result{Name: name, Value: round(value), Unit: unit, Baseline: round(limit), Ratio: roundDown(ratio(limit, max(value, limit/1000))), Goal: 1}
}

// info is a result with a baseline for context and no goal.
func info(name, unit string, value, baseline float64) Result {
	return Result{Name: name, Value: round(value), Unit: unit, Baseline: round(baseline), Ratio: round(ratio(value, baseline))}
}

func ratio(a, b float64) float64 {
	if b <= 0 || a <= 0 {
		return 0
	}
	return a / b
}

// round keeps 4 significant digits, so JSON stays readable.
func round(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	p := math.Pow(10, 3-math.Floor(math.Log10(math.Abs(v))))
	return math.Round(v*p) / p
}

// roundDown is round toward zero, for a ratio compared with its goal: 0.89996
// rounded would read 0.9 and meet a goal of 0.9 it missed.
func roundDown(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	p := math.Pow(10, 3-math.Floor(math.Log10(v)))
	return math.Floor(v*p*(1+1e-12)) / p // 0.7·10⁴ is 6999.999… in floating point
}

// Parts names the benchmarks Run knows, in the order it runs them.
var Parts = []string{"embed", "knn", "merge", "pass", "remote", "plan", "orchestration", "pack"}

// Options configures a run.
type Options struct {
	// Quick shrinks every size for a smoke test of a few minutes.
	Quick bool
	// Parts to run; empty means all of Parts.
	Parts []string
	// Threads is ONNX Runtime's intra-op thread count; 0 means a worker's
	// defaults (activities.DefaultThreads for models, every CPU the
	// process may use for the k-NN search).
	Threads int
	// Concurrency is how many shards the embedding pipeline embeds at
	// once, as a worker's -concurrency does, and how many streams of
	// batches ORT alone runs; 0 means a worker's default
	// with EP (activities.DefaultConcurrency).
	Concurrency int
	// EP is the execution provider the embedding part runs on, both
	// sides: "cpu" (the default) or "cuda".
	EP string
	// ORTLib is libonnxruntime's path.
	ORTLib string
	// Dir holds the temporary buckets and the dev server's state; empty
	// means a fresh folder under os.TempDir, removed at the end.
	Dir string
	// Worker is the dcd worker binary the pass runs on; empty builds one.
	Worker string
	// Latency is how long the remote part's store holds each request;
	// 0 means DefaultLatency.
	Latency time.Duration
	// WorkerProfile, when set, has each worker the pass part starts write
	// a CPU profile to WorkerProfile-<run> (the pass's searches and reads
	// run there, not in this process).
	WorkerProfile string
	// Log receives progress lines; nil discards them.
	Log io.Writer

	srv *server // shared by the parts that need Temporal
}

// modelThreads and searchThreads are the intra-op threads of the model
// sessions and of the k-NN search: Threads, or a worker's defaults.
func (o Options) modelThreads() int {
	if o.Threads > 0 {
		return o.Threads
	}
	return activities.DefaultThreads(o.concurrency())
}

func (o Options) searchThreads() int {
	if o.Threads > 0 {
		return o.Threads
	}
	return runtime.GOMAXPROCS(0)
}

func (o Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, "bench: "+format+"\n", args...)
	}
}

func (o Options) want(part string) bool { return len(o.Parts) == 0 || slices.Contains(o.Parts, part) }

// Run runs the chosen parts and returns their results in order.
func Run(ctx context.Context, o Options) ([]Result, error) {
	for _, p := range o.Parts {
		if !slices.Contains(Parts, p) {
			return nil, fmt.Errorf("bench: unknown part %q (want %s)", p, strings.Join(Parts, ", "))
		}
	}
	if o.Dir == "" {
		dir, err := os.MkdirTemp("", "dcd-bench-")
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		defer os.RemoveAll(dir)
		o.Dir = dir
	}
	if err := initORT(o.ORTLib); err != nil {
		return nil, err
	}
	if o.want("pass") || o.want("remote") || o.want("orchestration") || o.want("pack") {
		srv, err := startServer(ctx, o)
		if err != nil {
			return nil, err
		}
		defer srv.stop()
		o.srv = srv
	}
	var all []Result
	steps := []struct {
		part string
		run  func(context.Context, Options) ([]Result, error)
	}{
		{"embed", Embedding},
		{"knn", KNN},
		{"merge", Merge},
		{"pass", Pass},
		{"remote", Remote},
		{"plan", Plan},
		{"orchestration", Orchestration},
		{"pack", Pack},
	}
	for _, s := range steps {
		if !o.want(s.part) {
			continue
		}
		start := time.Now()
		rs, err := s.run(ctx, o)
		if err != nil {
			return append(all, rs...), fmt.Errorf("bench: %s: %w", s.part, err)
		}
		o.logf("%s done in %s", s.part, time.Since(start).Round(time.Second))
		all = append(all, rs...)
	}
	return all, nil
}

// WriteJSON writes the results as an indented JSON list.
func WriteJSON(w io.Writer, rs []Result) error {
	if rs == nil {
		rs = []Result{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rs)
}

// WriteTable writes the results as an aligned table.
func WriteTable(w io.Writer, rs []Result) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "name\tvalue\tunit\tbaseline\tratio\tgoal\t\t")
	for _, r := range rs {
		goal, mark := "-", ""
		if r.Goal > 0 {
			goal = "≥ " + num(r.Goal)
			mark = "ok"
			if !r.Met() {
				mark = "MISS"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Name, num(r.Value), r.Unit, orNone(r.Baseline), orNone(r.Ratio), goal, mark)
	}
	return tw.Flush()
}

func num(v float64) string { return fmt.Sprintf("%.4g", v) }

// orNone is num, or "-" for a result without a baseline (0).
func orNone(v float64) string {
	if v == 0 {
		return "-"
	}
	return num(v)
}

// labelled runs fn with the pprof label bench=name, which goroutines it
// starts inherit, so that a profile (starter bench -cpuprofile) can be
// narrowed to one measured side: go tool pprof -tagfocus bench=NAME.
func labelled(name string, fn func() error) func() error {
	return func() (err error) {
		pprof.Do(context.Background(), pprof.Labels("bench", name), func(context.Context) { err = fn() })
		return err
	}
}

// metered runs fn and adds the process's CPU time (user and system, every
// thread's, ONNX Runtime's included) to *cpu.
func metered(cpu *time.Duration, fn func() error) func() error {
	return func() error {
		before := processCPU()
		err := fn()
		*cpu += processCPU() - before
		return err
	}
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// best runs each of fns reps times, interleaved, and returns each one's
// shortest time: interleaving spreads a noisy neighbour over all of them.
func best(reps int, fns ...func() error) ([]time.Duration, error) {
	out := make([]time.Duration, len(fns))
	for r := 0; r < reps; r++ {
		for i, fn := range fns {
			start := time.Now()
			if err := fn(); err != nil {
				return nil, err
			}
			if d := time.Since(start); r == 0 || d < out[i] {
				out[i] = d
			}
		}
	}
	return out, nil
}
