package ortrun_test

import (
	"fmt"
	"strings"
	"testing"

	"dcd/internal/onnx"
	"dcd/internal/ortrun"
)

func identity(t *testing.T) []byte {
	t.Helper()
	g := &onnx.Graph{
		Name:    "id",
		Inputs:  []onnx.Value{{Name: "x", Elem: onnx.Float, Shape: []int64{-1, 2}}},
		Outputs: []onnx.Value{{Name: "y", Elem: onnx.Float, Shape: []int64{-1, 2}}},
		Nodes:   []onnx.Node{{Op: "Identity", Inputs: []string{"x"}, Outputs: []string{"y"}}},
	}
	b, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestExecutionProviders(t *testing.T) {
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatalf("%v (run `make setup`)", err)
	}
	model := identity(t)

	t.Run("cpu", func(t *testing.T) {
		s, err := ortrun.NewSession("m.onnx", model, []string{"x"}, []string{"y"}, ortrun.Options{EP: "cpu", Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		out, err := s.Run(ortrun.Tensor{Shape: []int64{1, 2}, Floats: []float32{3, 4}})
		if err != nil || out[0].Floats[1] != 4 {
			t.Fatalf("run: %v %v", out, err)
		}
		// A tensor whose data does not fill its shape is an error, not a
		// panic.
		if _, err := s.Run(ortrun.Tensor{Shape: []int64{2, 3}, Floats: make([]float32, 5)}); err == nil || !strings.Contains(err.Error(), `input "x"`) {
			t.Errorf("5 values for a 2×3 input: %v, want an error naming the input", err)
		}
		if err := s.RunInto([]ortrun.Tensor{{Shape: []int64{1, 2}, Floats: []float32{3, 4}}}, []ortrun.Tensor{{Shape: []int64{1, 2}, Floats: make([]float32, 1)}}); err == nil {
			t.Error("an output of 1 value for a 1×2 output: no error")
		}
	})

	t.Run("unknown", func(t *testing.T) {
		_, err := ortrun.NewSession("m.onnx", model, []string{"x"}, []string{"y"}, ortrun.Options{EP: "tpu"})
		if err == nil {
			t.Fatal("an unknown execution provider was accepted")
		}
		for _, w := range []string{"m.onnx", `"tpu"`, "cpu or cuda"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not say %s", err, w)
			}
		}
	})

	// The library `make setup` installs is ONNX Runtime's CPU build: asking
	// for CUDA must say which files the GPU build brings.
	t.Run("cuda on the cpu build", func(t *testing.T) {
		s, err := ortrun.NewSession("m.onnx", model, []string{"x"}, []string{"y"}, ortrun.Options{EP: "cuda"})
		if err == nil {
			s.Close()
			t.Skip("this ONNX Runtime library has a working CUDA provider")
		}
		for _, w := range []string{"m.onnx", "cuda", "libonnxruntime_providers_cuda.so", "libonnxruntime_providers_shared.so", "ldd libonnxruntime_providers_cuda.so", "cuDNN 9"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not name %s", err, w)
			}
		}
		t.Log(err)
	})
}

// TestConcurrentRuns runs one session from several goroutines at once, as
// a worker embedding several shards does: each run gets its own input
// back, and a run after Close fails instead of touching a freed session.
func TestConcurrentRuns(t *testing.T) {
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatalf("%v (run `make setup`)", err)
	}
	s, err := ortrun.NewSession("m.onnx", identity(t), []string{"x"}, []string{"y"}, ortrun.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			for i := range 200 {
				in := []float32{float32(g), float32(i)}
				out, err := s.Run(ortrun.Tensor{Shape: []int64{1, 2}, Floats: in})
				if err != nil {
					errs <- err
					return
				}
				if got := out[0].Floats; got[0] != in[0] || got[1] != in[1] {
					errs <- fmt.Errorf("goroutine %d run %d: got %v, want %v", g, i, got, in)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ortrun.Tensor{Shape: []int64{1, 2}, Floats: []float32{1, 2}}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("a run after Close: %v, want an error saying the session is closed", err)
	}
}
