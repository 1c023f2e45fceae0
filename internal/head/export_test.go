package head

import (
	"bytes"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"dcd/internal/mnist"
	"dcd/internal/onnx"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
)

// backbone is a small classifier on 28×28 digits: random convolutions →
// max-pool → "features" [N,288] → an untrained head → "logits" [N,10].
func backbone(t *testing.T) []byte {
	t.Helper()
	data, err := backboneGraph().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// backboneGraph is backbone's graph; its node 3 makes "features".
func backboneGraph() *onnx.Graph {
	rng := rand.New(rand.NewPCG(11, 11))
	randn := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() / 5)
		}
		return v
	}
	const filters, flat = 8, 8 * 6 * 6
	return &onnx.Graph{
		Name:   "backbone",
		Inputs: []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 28, 28}}},
		Outputs: []onnx.Value{
			{Name: "features", Elem: onnx.Float, Shape: []int64{-1, flat}},
			{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, 10}},
		},
		Initializers: []onnx.Tensor{
			{Name: "conv_w", Dims: []int64{filters, 1, 5, 5}, Floats: randn(filters * 25)},
			{Name: "old_head", Dims: []int64{flat, 10}, Floats: randn(flat * 10)},
		},
		Nodes: []onnx.Node{
			{Op: "Conv", Inputs: []string{"image", "conv_w"}, Outputs: []string{"conv"}, Attrs: map[string]any{"kernel_shape": []int64{5, 5}}},
			{Op: "Relu", Inputs: []string{"conv"}, Outputs: []string{"relu"}},
			{Op: "MaxPool", Inputs: []string{"relu"}, Outputs: []string{"pooled"},
				Attrs: map[string]any{"kernel_shape": []int64{4, 4}, "strides": []int64{4, 4}}},
			{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"features"}, Attrs: map[string]any{"axis": 1}},
			{Op: "MatMul", Inputs: []string{"features", "old_head"}, Outputs: []string{"logits"}},
		},
	}
}

func digits(t *testing.T, set *mnist.Set, first, n int) []float32 {
	x := make([]float32, n*28*28)
	for i := range n {
		for j, v := range set.Images[first+i] {
			x[i*784+j] = float32(v) / 255
		}
	}
	return x
}

func run(t *testing.T, model []byte, outputs []string, x []float32, n int) []ortrun.Tensor {
	t.Helper()
	sess, err := ortrun.NewSession("test", model, []string{"image"}, outputs, ortrun.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.Run(ortrun.Tensor{Shape: []int64{int64(n), 1, 28, 28}, Floats: x})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The exported model (the target's backbone with a retrained head) gives,
// from raw MNIST digits, the in-process head's predictions, logits and
// softmax probabilities; the old head is gone.
func TestExportMatchesHead(t *testing.T) {
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatal(err)
	}
	train, test, err := mnist.Load(mnist.DefaultDir())
	if err != nil {
		t.Fatal(err)
	}
	model := backbone(t)
	const nTrain, nTest = 3000, 1000
	feats := run(t, model, []string{"features"}, digits(t, train, 0, nTrain), nTrain)[0]
	d := int(feats.Shape[1])
	rows := &Slice{}
	for i := range nTrain {
		rows.X = append(rows.X, feats.Floats[i*d:(i+1)*d])
		rows.Y = append(rows.Y, int(train.Labels[i]))
	}
	h, err := Train(rows, Options{Classes: 10, Iters: 100})
	if err != nil {
		t.Fatal(err)
	}

	exported, err := h.ONNX(model, ExportNames{Features: "features", Logits: "logits", Probabilities: "probabilities"})
	if err != nil {
		t.Fatal(err)
	}
	_, outs, err := ortrun.Describe(exported)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range outs {
		names = append(names, o.Name)
	}
	if len(names) != 3 || names[0] != "features" || names[1] != "logits" || names[2] != "probabilities" {
		t.Fatalf("exported outputs %q, want features, logits, probabilities", names)
	}

	x := digits(t, test, 0, nTest)
	want := run(t, model, []string{"features"}, x, nTest)[0]
	got := run(t, exported, []string{"features", "logits", "probabilities"}, x, nTest)
	correct, agree := 0, 0
	var logits []float32
	for i := range nTest {
		f := want.Floats[i*d : (i+1)*d]
		logits = h.Logits(f, logits)
		gl := got[1].Floats[i*10 : (i+1)*10]
		gp := got[2].Floats[i*10 : (i+1)*10]
		var sum float64
		mx := math.Inf(-1)
		for _, v := range logits {
			mx = max(mx, float64(v))
		}
		for _, v := range logits {
			sum += math.Exp(float64(v) - mx)
		}
		for c := range 10 {
			if math.Abs(float64(gl[c]-logits[c])) > 1e-3*(1+math.Abs(float64(logits[c]))) {
				t.Fatalf("image %d class %d: exported logit %v, head %v", i, c, gl[c], logits[c])
			}
			p := math.Exp(float64(logits[c])-mx) / sum
			if math.Abs(float64(gp[c])-p) > 1e-4 {
				t.Fatalf("image %d class %d: exported probability %v, softmax of the head %v", i, c, gp[c], p)
			}
		}
		if argmax32(gp) == h.Predict(f) {
			agree++
		}
		if h.Predict(f) == int(test.Labels[i]) {
			correct++
		}
	}
	t.Logf("head accuracy on %d test digits %.3f; exported model agrees on %d", nTest, float64(correct)/nTest, agree)
	if agree != nTest {
		t.Errorf("exported model's class differs from the head's on %d of %d digits", nTest-agree, nTest)
	}
	if correct < nTest*8/10 {
		t.Errorf("head accuracy %.3f: the test's backbone is too weak to mean anything", float64(correct)/nTest)
	}
}

func TestExportErrors(t *testing.T) {
	h := &Head{Classes: 2, Dim: 1, Mean: []float32{0}, Std: []float32{1}, W: []float32{1, -1}, B: []float32{0, 0}}
	model := backbone(t)
	if _, err := h.ONNX(model, ExportNames{Features: "nope", Logits: "logits", Probabilities: "p"}); err == nil {
		t.Error("a missing features tensor was accepted")
	}
	if _, err := h.ONNX(model, ExportNames{Features: "features", Logits: "relu", Probabilities: "p"}); err == nil {
		t.Error("a logits name that the backbone uses was accepted")
	}
	if _, err := h.ONNX([]byte("not a model"), ExportNames{Features: "features", Logits: "l", Probabilities: "p"}); err == nil {
		t.Error("garbage was accepted as a model")
	}
	// A name defined twice makes a model ONNX Runtime refuses to load.
	if _, err := h.ONNX(model, ExportNames{Features: "features", Logits: "p", Probabilities: "p"}); err == nil {
		t.Error("logits and probabilities of one name were accepted")
	}
	// A target whose logits output is called probabilities gets its head's
	// logits another name.
	if n := NewExportNames("features", "probabilities", "probabilities", nil); n.Logits == n.Probabilities {
		t.Errorf("NewExportNames kept one name twice: %+v", n)
	} else if _, err := h.ONNX(model, n); err != nil {
		t.Errorf("export with %+v: %v", n, err)
	}
	// Nor one whose config reads features and logits from one output.
	if n := NewExportNames("features", "features", "probabilities", nil); n.Logits == n.Features {
		t.Errorf("NewExportNames kept one name twice: %+v", n)
	}
}

func argmax32(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// An export names its classes, and the input and preprocessing the pass
// used, in the model's metadata, in place of the target's, and loads in
// ONNX Runtime; a wrong count of names is refused.
func TestExportMetadata(t *testing.T) {
	const d = 8 * 6 * 6 // the backbone's features
	h := &Head{Classes: 2, Dim: d, Mean: make([]float32, d), Std: make([]float32, d), W: make([]float32, 2*d), B: []float32{0, 0}}
	for i := range h.Std {
		h.Std[i] = 1
	}
	model := backbone(t)
	names := NewExportNames("features", "logits", "probabilities", []string{"cat", "dog"})
	names.Input = "image"
	names.Preprocess = preprocess.Spec{Channels: 1, Height: 12, Width: 12, Resize: "Crop", Mean: []float32{0.5}, Std: []float32{0.25}}
	out, err := h.ONNX(model, names)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ortrun.Describe(out); err != nil {
		t.Fatalf("the export does not load: %v", err)
	}
	want := map[string]string{
		"classes":    `["cat","dog"]`,
		"outputs":    "logits,probabilities",
		"input":      "image",
		"preprocess": `{"layout":"NCHW","channels":1,"height":12,"width":12,"resize":"crop","scale":"unit","mean":[0.5],"std":[0.25]}`,
	}
	if meta, err := onnx.Metadata(out); err != nil || !maps.Equal(meta, want) {
		t.Errorf("metadata %v (%v), want %v", meta, err, want)
	}
	if _, err := h.ONNX(model, NewExportNames("features", "logits", "probabilities", []string{"cat"})); err == nil {
		t.Error("one class name for a head of two was accepted")
	}
}

// A target whose features come out of an If node (as exporters write
// shape checks) exports too: its branches read an outer tensor, an
// initializer nothing else reads, and a node's output nothing else reads;
// all stay, while the old head goes.
func TestExportKeepsSubgraphs(t *testing.T) {
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatal(err)
	}
	const flat = 8 * 6 * 6
	branch := func(out string, nodes ...onnx.Node) *onnx.Graph {
		return &onnx.Graph{Name: "branch_" + out, Nodes: nodes,
			Outputs: []onnx.Value{{Name: out, Elem: onnx.Float, Shape: []int64{-1, flat}}}}
	}
	// The backbone, its Flatten to "features" replaced by an If.
	g := backboneGraph()
	g.Initializers = append(g.Initializers,
		onnx.Tensor{Name: "one", Dims: []int64{}, Floats: []float32{1}},
		onnx.Tensor{Name: "two", Dims: []int64{}, Floats: []float32{2}},
		onnx.Tensor{Name: "flat_shape", Dims: []int64{2}, Ints: []int64{-1, flat}})
	g.Nodes = slices.Concat(g.Nodes[:3], []onnx.Node{
		{Op: "Less", Inputs: []string{"one", "two"}, Outputs: []string{"cond"}},
		{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"flattened"}, Attrs: map[string]any{"axis": 1}},
		{Op: "If", Inputs: []string{"cond"}, Outputs: []string{"features"}, Attrs: map[string]any{
			"then_branch": branch("reshaped", onnx.Node{Op: "Reshape", Inputs: []string{"pooled", "flat_shape"}, Outputs: []string{"reshaped"}}),
			"else_branch": branch("identity", onnx.Node{Op: "Identity", Inputs: []string{"flattened"}, Outputs: []string{"identity"}}),
		}},
	}, g.Nodes[4:])
	model, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// The new head: the old one's random weights, as a Head.
	h := &Head{Classes: 10, Dim: flat, Mean: make([]float32, flat), Std: make([]float32, flat), W: g.Initializers[1].Floats, B: make([]float32, 10)}
	for i := range h.Std {
		h.Std[i] = 1
	}
	exported, err := h.ONNX(model, ExportNames{Features: "features", Logits: "logits", Probabilities: "probabilities"})
	if err != nil {
		t.Fatalf("export of a target with an If node: %v", err)
	}
	if bytes.Contains(exported, []byte("old_head")) {
		t.Error("the old head's weights are still in the exported model")
	}
	train, _, err := mnist.Load(mnist.DefaultDir())
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	x := digits(t, train, 0, n)
	want := run(t, model, []string{"features"}, x, n)[0]
	got := run(t, exported, []string{"features", "logits"}, x, n)
	var logits []float32
	for i := range n {
		f := want.Floats[i*flat : (i+1)*flat]
		if !slices.Equal(got[0].Floats[i*flat:(i+1)*flat], f) {
			t.Fatalf("image %d: the exported model's features differ from the target's", i)
		}
		logits = h.Logits(f, logits)
		for c := range 10 {
			if gl := got[1].Floats[i*10+c]; math.Abs(float64(gl-logits[c])) > 1e-3*(1+math.Abs(float64(logits[c]))) {
				t.Fatalf("image %d class %d: exported logit %v, head %v", i, c, gl, logits[c])
			}
		}
	}
}
