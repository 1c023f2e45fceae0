package onnx_test

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"dcd/internal/onnx"
	"dcd/internal/ortrun"
)

// classifier is x [N,3,2,2] → GlobalAveragePool "pooled" [N,3,1,1] →
// Flatten "flat" → MatMul "logits" [N,2]; only logits is a graph output.
func classifier(t *testing.T, extra ...onnx.Node) []byte {
	t.Helper()
	g := &onnx.Graph{
		Name:         "clf",
		Inputs:       []onnx.Value{{Name: "x", Elem: onnx.Float, Shape: []int64{-1, 3, 2, 2}}},
		Outputs:      []onnx.Value{{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, 2}}},
		Initializers: []onnx.Tensor{{Name: "w", Dims: []int64{3, 2}, Floats: []float32{1, -1, 2, 0.5, -3, 4}}},
		Nodes: append([]onnx.Node{
			{Op: "GlobalAveragePool", Inputs: []string{"x"}, Outputs: []string{"pooled"}},
			{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"flat"}},
			{Op: "MatMul", Inputs: []string{"flat", "w"}, Outputs: []string{"logits"}},
		}, extra...),
	}
	b, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func initORT(t *testing.T) {
	t.Helper()
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatalf("%v (run `make setup`)", err)
	}
}

// An inner [N,C,1,1] tensor becomes a [N,C] graph output holding the
// per-channel means, and the original outputs still compute as before.
func TestExposeOutputsRunsInOnnxRuntime(t *testing.T) {
	initORT(t)
	model := classifier(t)
	out, names, err := onnx.ExposeOutputs(model, []string{"pooled", "logits"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"pooled" + onnx.ExposeSuffix, "logits"}; !slices.Equal(names, want) {
		t.Fatalf("names %q, want %q", names, want)
	}
	s, err := ortrun.NewSession("exposed", out, []string{"x"}, names, ortrun.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	x := make([]float32, 2*3*4) // two images, channel c of image n holds n*10+c+[0,1,2,3]
	for n := 0; n < 2; n++ {
		for c := 0; c < 3; c++ {
			for p := 0; p < 4; p++ {
				x[(n*3+c)*4+p] = float32(n*10 + c + p)
			}
		}
	}
	res, err := s.Run(ortrun.Tensor{Shape: []int64{2, 3, 2, 2}, Floats: x})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res[0].Shape, []int64{2, 3}) {
		t.Fatalf("exposed shape %v, want [2 3]", res[0].Shape)
	}
	w := []float32{1, -1, 2, 0.5, -3, 4}
	for n := 0; n < 2; n++ {
		var logit [2]float32
		for c := 0; c < 3; c++ {
			mean := float32(n*10+c) + 1.5
			if got := res[0].Floats[n*3+c]; got != mean {
				t.Errorf("image %d channel %d: pooled %v, want %v", n, c, got, mean)
			}
			logit[0] += mean * w[c*2]
			logit[1] += mean * w[c*2+1]
		}
		for k := range logit {
			if got := res[1].Floats[n*2+k]; math.Abs(float64(got-logit[k])) > 1e-4 {
				t.Errorf("image %d logit %d: %v, want %v", n, k, got, logit[k])
			}
		}
	}
}

func TestExposeOutputsLeavesGraphOutputsAlone(t *testing.T) {
	model := classifier(t)
	out, names, err := onnx.ExposeOutputs(model, []string{"logits"})
	if err != nil {
		t.Fatal(err)
	}
	if &out[0] != &model[0] || len(out) != len(model) || !slices.Equal(names, []string{"logits"}) {
		t.Errorf("a graph output was rewritten: names %q", names)
	}
}

// Asking twice for one tensor adds one output; a name already in the graph
// is not reused for the new output.
func TestExposeOutputsNames(t *testing.T) {
	initORT(t)
	model := classifier(t, onnx.Node{Op: "Relu", Inputs: []string{"flat"}, Outputs: []string{"pooled" + onnx.ExposeSuffix}})
	out, names, err := onnx.ExposeOutputs(model, []string{"pooled", "pooled"})
	if err != nil {
		t.Fatal(err)
	}
	want := "pooled" + onnx.ExposeSuffix + "_2"
	if names[0] != want || names[1] != want {
		t.Fatalf("names %q, want both %q", names, want)
	}
	_, outs, err := ortrun.Describe(out)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range outs {
		got = append(got, o.Name)
	}
	if !slices.Equal(got, []string{"logits", want}) {
		t.Errorf("graph outputs %q, want [logits %s]", got, want)
	}
}

func TestExposeOutputsMissingTensor(t *testing.T) {
	model := classifier(t)
	for _, name := range []string{"pool", "x", "w", ""} {
		_, _, err := onnx.ExposeOutputs(model, []string{"logits", name})
		var miss *onnx.MissingTensorError
		if !errors.As(err, &miss) {
			t.Fatalf("%q: got %v, want a MissingTensorError", name, err)
		}
		if miss.Tensor != name || !strings.Contains(err.Error(), `"`+name+`"`) {
			t.Errorf("%q: error %q does not name the tensor", name, err)
		}
		// The candidates are what the user can write instead.
		for _, c := range []string{`"pooled" (GlobalAveragePool)`, `"flat" (Flatten)`} {
			if !strings.Contains(err.Error(), c) {
				t.Errorf("%q: error %q does not list %s", name, err, c)
			}
		}
	}
}

func TestExposeOutputsNotAModel(t *testing.T) {
	for _, b := range [][]byte{[]byte("not a protobuf \xff\xff"), {0x08, 0x08}} {
		if _, _, err := onnx.ExposeOutputs(b, []string{"a"}); !errors.Is(err, onnx.ErrNotModel) {
			t.Errorf("%q: got %v, want ErrNotModel", b, err)
		}
	}
}

func TestNodeOutputs(t *testing.T) {
	outs, err := onnx.NodeOutputs(classifier(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []onnx.NodeOutput{{"pooled", "GlobalAveragePool"}, {"flat", "Flatten"}, {"logits", "MatMul"}}
	if !slices.Equal(outs, want) {
		t.Errorf("got %v, want %v", outs, want)
	}
}
