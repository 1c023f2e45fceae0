package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"

	"dcd/internal/bench"
	"dcd/internal/ortrun"
)

const benchSynopsis = "[-json] [-quick] [-parts LIST] [-threads N] [-concurrency N] [-ep cpu|cuda] [-latency D] [-worker PATH] [-cpuprofile FILE] [-memprofile FILE] [-trace FILE]"

// cmdBench runs the benchmarks (internal/bench) and prints their table, or
// the JSON list with -json. Progress goes to stderr.
func cmdBench(ctx context.Context, e *cli, args []string) error {
	fs := e.flags("bench")
	asJSON := fs.Bool("json", false, `print a JSON list of {"name","value","unit","baseline","ratio","goal"} instead of the table`)
	quick := fs.Bool("quick", false, "small sizes: a smoke test of about a minute")
	parts := fs.String("parts", "", "comma-separated parts to run, of "+strings.Join(bench.Parts, ",")+" (default all)")
	threads := fs.Int("threads", 0, "ONNX Runtime intra-op threads per session (default: a worker's, CPUs/concurrency for models and every CPU for the k-NN search)")
	concurrency := fs.Int("concurrency", 0, "shards the embedding part embeds at once, as a worker's -concurrency (default: a worker's, one per four CPUs, at least 2; one per two CPUs with -ep cuda)")
	ep := fs.String("ep", "cpu", "execution provider of the embedding part: cpu or cuda (ONNX Runtime's GPU build, see README)")
	latency := fs.Duration("latency", bench.DefaultLatency, "how long the remote part's S3 server takes to answer each request")
	worker := fs.String("worker", "", "worker binary for the pass part (default: worker beside this starter, else built with go build)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run to FILE, for go tool pprof, and the pass part's workers' to FILE-bench-<pool size>")
	traceFile := fs.String("trace", "", "write an execution trace of the run to FILE, for go tool trace")
	memProfile := fs.String("memprofile", "", "write a profile of what the run allocated to FILE, for go tool pprof -sample_index=alloc_space")
	pos, err := parse(fs, benchSynopsis, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErrorf("bench: unexpected argument %q (usage: starter bench %s)", pos[0], benchSynopsis)
	}
	var partList []string
	if *parts != "" {
		partList = strings.Split(*parts, ",")
	}
	for _, p := range partList {
		if !slices.Contains(bench.Parts, p) {
			return usageErrorf("bench: -parts: %q is not one of %s", p, strings.Join(bench.Parts, ","))
		}
	}
	if err := ortrun.CheckEP(*ep); err != nil {
		return usageErrorf("bench: -ep: %v", err)
	}
	if *latency <= 0 {
		// The remote part measures a store some way off; 0 would read as
		// its default.
		return usageErrorf("bench: -latency %s: must be positive (1ms for a store nearby)", *latency)
	}
	stopProfile, err := record(*cpuProfile, pprof.StartCPUProfile, pprof.StopCPUProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	stopTrace, err := record(*traceFile, trace.Start, trace.Stop)
	if err != nil {
		return err
	}
	defer stopTrace()
	var memFile *os.File // made now: a path that cannot be written fails before minutes of bench
	if *memProfile != "" {
		if memFile, err = os.Create(*memProfile); err != nil {
			return err
		}
		defer memFile.Close()
	}
	o := bench.Options{Quick: *quick, Parts: partList, Threads: *threads, Concurrency: *concurrency, EP: *ep, Latency: *latency, Worker: *worker, WorkerProfile: *cpuProfile, Log: e.stderr}
	if o.Worker == "" {
		if exe, err := os.Executable(); err == nil {
			if w := filepath.Join(filepath.Dir(exe), "worker"); fileExists(w) {
				o.Worker = w
			}
		}
	}
	rs, err := bench.Run(ctx, o)
	write := func() error {
		if *asJSON {
			return bench.WriteJSON(e.stdout, rs)
		}
		return bench.WriteTable(e.stdout, rs)
	}
	if err != nil {
		// The parts measured before the failure, minutes of them, are
		// still worth their table.
		if len(rs) > 0 {
			write()
		}
		return err
	}
	if memFile != nil {
		if err := pprof.Lookup("allocs").WriteTo(memFile, 0); err != nil {
			return err
		}
	}
	return write()
}

// record starts a profile or trace into a new file at path, unless path is
// empty; the function it returns stops it and closes the file.
func record(path string, start func(io.Writer) error, stop func()) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { stop(); f.Close() }, nil
}

func fileExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir()
}
