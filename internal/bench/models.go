package bench

import (
	"fmt"
	"math"
	"math/rand/v2"

	"dcd/internal/onnx"
)

// model is a generated similarity model with random weights: the shapes and
// operators set its speed, not its weights.
type model struct {
	name     string
	graph    *onnx.Graph
	channels int
	side     int
	gflop    float64 // per image, multiply-adds counted as 2
}

// weights is a seeded He-uniform initializer for a conv of fan-in fanIn,
// scaled by gain.
type weights struct{ rng *rand.Rand }

func (w weights) tensor(name string, gain float64, dims ...int64) onnx.Tensor {
	n, fanIn := int64(1), int64(1)
	for i, d := range dims {
		n *= d
		if i > 0 {
			fanIn *= d
		}
	}
	a := gain * math.Sqrt(6/float64(fanIn))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(a * (2*w.rng.Float64() - 1))
	}
	return onnx.Tensor{Name: name, Dims: dims, Floats: v}
}

// demoModel is the A256-like demo backbone (DESIGN §6): 28×28 gray → Conv
// 32 5×5 → ReLU → MaxPool 6×6/6 → 512 → linear to 256 features.
func demoModel() model {
	w := weights{rand.New(rand.NewPCG(1, 256))}
	g := &onnx.Graph{
		Name:    "bench_a256",
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 28, 28}}},
		Outputs: []onnx.Value{{Name: "features", Elem: onnx.Float, Shape: []int64{-1, 256}}},
		Initializers: []onnx.Tensor{
			w.tensor("conv_w", 1, 32, 1, 5, 5),
			w.tensor("proj", 1, 512, 256),
		},
		Nodes: []onnx.Node{
			{Op: "Conv", Inputs: []string{"image", "conv_w"}, Outputs: []string{"conv"}, Attrs: map[string]any{"kernel_shape": []int64{5, 5}}},
			{Op: "Relu", Inputs: []string{"conv"}, Outputs: []string{"relu"}},
			{Op: "MaxPool", Inputs: []string{"relu"}, Outputs: []string{"pooled"}, Attrs: map[string]any{"kernel_shape": []int64{6, 6}, "strides": []int64{6, 6}}},
			{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"flat"}, Attrs: map[string]any{"axis": 1}},
			{Op: "MatMul", Inputs: []string{"flat", "proj"}, Outputs: []string{"features"}},
		},
	}
	flop := 2.0 * (32*25*24*24 + 512*256)
	return model{name: "demo", graph: g, channels: 1, side: 28, gflop: flop / 1e9}
}

// freeModel costs next to nothing: it averages each 28×28 gray image's
// 2×2 blocks into 196 features. Embedding with it measures the pipeline
// alone — reading, decoding, filling, writing — at the rate the CPUs
// sustain it, which is as fast as they can feed any accelerator.
func freeModel() model {
	g := &onnx.Graph{
		Name:    "bench_free",
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 28, 28}}},
		Outputs: []onnx.Value{{Name: "features", Elem: onnx.Float, Shape: []int64{-1, 196}}},
		Nodes: []onnx.Node{
			{Op: "AveragePool", Inputs: []string{"image"}, Outputs: []string{"pooled"}, Attrs: map[string]any{"kernel_shape": []int64{2, 2}, "strides": []int64{2, 2}}},
			{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"features"}, Attrs: map[string]any{"axis": 1}},
		},
	}
	return model{name: "free", graph: g, channels: 1, side: 28, gflop: 196 * 4 / 1e9}
}

// resnetBuilder appends ResNet layers to a graph.
type resnetBuilder struct {
	g    *onnx.Graph
	w    weights
	n    int     // names
	side int     // current spatial side
	flop float64 // per image
}

func (b *resnetBuilder) name(p string) string {
	b.n++
	return fmt.Sprintf("%s%d", p, b.n)
}

// conv adds Conv (+ ReLU when relu) and returns its output name.
func (b *resnetBuilder) conv(in string, cin, cout, k, stride int, relu bool, gain float64) string {
	wname, out := b.name("w"), b.name("conv")
	b.g.Initializers = append(b.g.Initializers, b.w.tensor(wname, gain, int64(cout), int64(cin), int64(k), int64(k)))
	pad := int64(k / 2)
	b.g.Nodes = append(b.g.Nodes, onnx.Node{Op: "Conv", Inputs: []string{in, wname}, Outputs: []string{out}, Attrs: map[string]any{
		"kernel_shape": []int64{int64(k), int64(k)}, "strides": []int64{int64(stride), int64(stride)}, "pads": []int64{pad, pad, pad, pad}}})
	b.side = (b.side+2*int(pad)-k)/stride + 1
	b.flop += 2 * float64(cin*cout*k*k*b.side*b.side)
	if !relu {
		return out
	}
	r := b.name("relu")
	b.g.Nodes = append(b.g.Nodes, onnx.Node{Op: "Relu", Inputs: []string{out}, Outputs: []string{r}})
	return r
}

// bottleneck adds one ResNet-50 bottleneck block.
func (b *resnetBuilder) bottleneck(in string, cin, mid, stride int) string {
	side := b.side
	x := b.conv(in, cin, mid, 1, 1, true, 1)
	x = b.conv(x, mid, mid, 3, stride, true, 1)
	x = b.conv(x, mid, 4*mid, 1, 1, false, 0.5) // small last gain keeps the sum finite without BatchNorm
	short := in
	if stride != 1 || cin != 4*mid {
		after := b.side
		b.side = side
		short = b.conv(in, cin, 4*mid, 1, stride, false, 1)
		b.side = after
	}
	sum, out := b.name("add"), b.name("relu")
	b.g.Nodes = append(b.g.Nodes,
		onnx.Node{Op: "Add", Inputs: []string{x, short}, Outputs: []string{sum}},
		onnx.Node{Op: "Relu", Inputs: []string{sum}, Outputs: []string{out}})
	return out
}

// resnetModel is ResNet-50's convolutions (stem, bottleneck stages 3-4-6-3,
// global average pool → 2048 features) with random weights and no
// BatchNorm (it folds into the convs at inference): about 4.1 G
// multiply-adds per 224×224 image.
func resnetModel(side int) model {
	b := &resnetBuilder{
		g: &onnx.Graph{
			Name:    "bench_resnet50",
			Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 3, int64(side), int64(side)}}},
			Outputs: []onnx.Value{{Name: "features", Elem: onnx.Float, Shape: []int64{-1, 2048}}},
		},
		w:    weights{rand.New(rand.NewPCG(5, 50))},
		side: side,
	}
	x := b.conv("image", 3, 64, 7, 2, true, 1)
	pooled := b.name("pool")
	b.g.Nodes = append(b.g.Nodes, onnx.Node{Op: "MaxPool", Inputs: []string{x}, Outputs: []string{pooled}, Attrs: map[string]any{
		"kernel_shape": []int64{3, 3}, "strides": []int64{2, 2}, "pads": []int64{1, 1, 1, 1}}})
	b.side = (b.side+2-3)/2 + 1
	x, cin := pooled, 64
	for stage, blocks := range []int{3, 4, 6, 3} {
		mid := 64 << stage
		for i := range blocks {
			stride := 1
			if i == 0 && stage > 0 {
				stride = 2
			}
			x = b.bottleneck(x, cin, mid, stride)
			cin = 4 * mid
		}
	}
	b.g.Nodes = append(b.g.Nodes,
		onnx.Node{Op: "GlobalAveragePool", Inputs: []string{x}, Outputs: []string{"gap"}},
		onnx.Node{Op: "Flatten", Inputs: []string{"gap"}, Outputs: []string{"features"}, Attrs: map[string]any{"axis": 1}})
	return model{name: "resnet50", graph: b.g, channels: 3, side: side, gflop: b.flop / 1e9}
}

// targetModel is the benchmark pass's target: 8×8 RGB → linear features of
// passDim → linear logits of passClasses. The pass finds every feature in
// the cache, so the model runs only when the pass checks it.
func targetModel() model {
	w := weights{rand.New(rand.NewPCG(2, passDim))}
	g := &onnx.Graph{
		Name:   "bench_target",
		Inputs: []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 3, 8, 8}}},
		Outputs: []onnx.Value{
			{Name: "features", Elem: onnx.Float, Shape: []int64{-1, passDim}},
			{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, passClasses}},
		},
		Initializers: []onnx.Tensor{
			w.tensor("proj", 1, 3*8*8, passDim),
			w.tensor("head", 1, passDim, passClasses),
		},
		Nodes: []onnx.Node{
			{Op: "Flatten", Inputs: []string{"image"}, Outputs: []string{"flat"}, Attrs: map[string]any{"axis": 1}},
			{Op: "MatMul", Inputs: []string{"flat", "proj"}, Outputs: []string{"features"}},
			{Op: "MatMul", Inputs: []string{"features", "head"}, Outputs: []string{"logits"}},
		},
	}
	return model{name: "target", graph: g, channels: 3, side: 8, gflop: 2 * float64(3*8*8*passDim+passDim*passClasses) / 1e9}
}
