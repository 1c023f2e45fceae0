package main

import (
	"flag"
	"strings"
	"testing"

	"dcd/internal/ortrun"
)

// A worker asked to run models on CUDA with a library that cannot (the
// CPU build here) stops at its start, naming what the provider needs,
// instead of taking and failing every embedding of a pass.
func TestCUDAWithoutItRefused(t *testing.T) {
	lib := ortrun.DefaultLibrary()
	if err := ortrun.Init(lib); err != nil {
		t.Skipf("no ONNX Runtime: %v", err)
	}
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	o := defineFlags(fs)
	if err := fs.Parse([]string{"-ep", "cuda", "-ort-lib", lib, "-storage", "mem://", "-address", "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	err := run(o)
	if err == nil || !strings.Contains(err.Error(), "-ep cuda") || !strings.Contains(err.Error(), "GPU build") {
		t.Errorf("run with -ep cuda on a CPU build: %v; want a refusal naming -ep cuda and what it needs", err)
	}
}
