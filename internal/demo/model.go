package demo

import (
	"cmp"
	"fmt"
	"image"
	"math"
	"slices"

	"gonum.org/v1/gonum/mat"

	"dcd/internal/head"
	"dcd/internal/onnx"
	"dcd/internal/ortrun"
)

// The target model's graph names, as the pass config gives them.
const (
	inputName    = "image"
	featuresName = "features"
	logitsName   = "logits"
)

// A256's shape (DESIGN.md §6): 32 random 5×5 filters, 6×6 max pooling of the
// 24×24 maps to 4×4, so 512 backbone values, projected to 256 by PCA.
const (
	filters    = 32
	kernel     = 5
	poolSide   = 6
	flatDim    = filters * ((side - kernel + 1) / poolSide) * ((side - kernel + 1) / poolSide)
	featureDim = 256
	// pcaFitMax bounds the images the PCA is fitted on, as in the study.
	pcaFitMax = 10000
	batchSize = 256
)

// model is the fitted target model and how it does on the world.
type model struct {
	onnx               []byte
	cleanAcc, errorAcc float64
}

// fitModel makes the A256 target: it runs the random-convolution backbone
// over the clean train images, fits the PCA on their backbone values and the
// softmax head on their features, and checks the assembled model on the
// clean test and E_heldout images.
func fitModel(o Options, w *world, opt ortrun.Options) (*model, error) {
	conv := convWeights(o)
	flats, err := inferImages(backboneGraph(conv), "flat", w.train, opt)
	if err != nil {
		return nil, err
	}
	mean, basis, err := pca(flats, min(pcaFitMax, len(w.train)))
	if err != nil {
		return nil, err
	}
	feats, err := infer(projectionGraph(mean, basis), featuresName, len(w.train), func(i int, dst []float32) {
		copy(dst, flats[i*flatDim:(i+1)*flatDim])
	}, opt)
	if err != nil {
		return nil, err
	}
	h, err := fitHead(feats, w.train)
	if err != nil {
		return nil, err
	}
	target := targetGraph(conv, mean, basis, h)
	m := &model{}
	if m.onnx, err = target.Marshal(); err != nil {
		return nil, fmt.Errorf("demo: target model: %w", err)
	}
	if m.cleanAcc, err = accuracy(target, w.test, opt); err != nil {
		return nil, err
	}
	if m.cleanAcc < minCleanAccuracy {
		return nil, fmt.Errorf("demo: target model has clean test accuracy %.4f, want at least %.2f", m.cleanAcc, minCleanAccuracy)
	}
	if m.errorAcc, err = accuracy(target, w.heldout, opt); err != nil {
		return nil, err
	}
	return m, nil
}

// convWeights draws the filters from a seeded normal and scales each to unit
// l2 norm, so that no filter dominates the pooled maxima by its scale alone.
func convWeights(o Options) []float32 {
	rng := o.rng(streamConv)
	w := make([]float32, filters*kernel*kernel)
	for f := range filters {
		v := make([]float64, kernel*kernel)
		var norm float64
		for i := range v {
			v[i] = rng.NormFloat64()
			norm += v[i] * v[i]
		}
		norm = math.Sqrt(norm)
		for i, x := range v {
			w[f*kernel*kernel+i] = float32(x / norm)
		}
	}
	return w
}

// pca fits the mean and the top featureDim principal axes of the first n
// rows of flats. Each axis is signed so that its largest component is
// positive: an eigenvector's sign is arbitrary, and the model must be the
// same bytes on every build.
func pca(flats []float32, n int) (mean []float32, basis []float32, err error) {
	mu := make([]float64, flatDim)
	for i := range n {
		for j, v := range flats[i*flatDim : (i+1)*flatDim] {
			mu[j] += float64(v)
		}
	}
	for j := range mu {
		mu[j] /= float64(n)
	}
	x := mat.NewDense(n, flatDim, nil)
	for i := range n {
		for j, v := range flats[i*flatDim : (i+1)*flatDim] {
			x.Set(i, j, float64(v)-mu[j])
		}
	}
	var cov mat.SymDense
	cov.SymOuterK(1/float64(max(n-1, 1)), x.T())
	var es mat.EigenSym
	if !es.Factorize(&cov, true) {
		return nil, nil, fmt.Errorf("demo: pca: eigendecomposition of the %d-image covariance failed", n)
	}
	vals := es.Values(nil)
	var vecs mat.Dense
	es.VectorsTo(&vecs)
	order := make([]int, flatDim)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(vals[b], vals[a]) })

	basis = make([]float32, flatDim*featureDim)
	for j, col := range order[:featureDim] {
		sign := axisSign(mat.Col(nil, col, &vecs))
		for i := range flatDim {
			basis[i*featureDim+j] = float32(sign * vecs.At(i, col))
		}
	}
	mean = make([]float32, flatDim)
	for j, v := range mu {
		mean[j] = float32(v)
	}
	return mean, basis, nil
}

// axisSign is the sign that makes v's largest-magnitude component (the
// first, on a tie) positive.
func axisSign(v []float64) float64 {
	best := 0
	for i, x := range v {
		if math.Abs(x) > math.Abs(v[best]) {
			best = i
		}
	}
	if v[best] < 0 {
		return -1
	}
	return 1
}

func fitHead(feats []float32, train []example) (*head.Head, error) {
	rows := &head.Slice{X: make([][]float32, len(train)), Y: make([]int, len(train))}
	for i, e := range train {
		rows.X[i] = feats[i*featureDim : (i+1)*featureDim]
		rows.Y[i] = int(e.label)
	}
	h, err := head.Train(rows, head.Options{Classes: classes, Lambda: 0.01, Iters: 300})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	return h, nil
}

// accuracy is the share of examples whose largest logit is their label.
func accuracy(target *onnx.Graph, ex []example, opt ortrun.Options) (float64, error) {
	logits, err := inferImages(target, logitsName, ex, opt)
	if err != nil {
		return 0, err
	}
	var correct int
	for i, e := range ex {
		row := logits[i*classes : (i+1)*classes]
		best := 0
		for c, v := range row {
			if v > row[best] {
				best = c
			}
		}
		if best == int(e.label) {
			correct++
		}
	}
	return float64(correct) / float64(len(ex)), nil
}

// inferImages runs g over the images, scaled to [0,1] as the pass's
// preprocessing will, and returns output out row after row.
func inferImages(g *onnx.Graph, out string, ex []example, opt ortrun.Options) ([]float32, error) {
	return infer(g, out, len(ex), func(i int, dst []float32) { fillPixels(dst, ex[i].img) }, opt)
}

func fillPixels(dst []float32, img *image.Gray) {
	for j, v := range img.Pix[:side*side] {
		dst[j] = float32(v) / 255
	}
}

// infer runs g's one input over n rows (fill writes row i) in batches and
// returns output out, row after row.
func infer(g *onnx.Graph, out string, n int, fill func(i int, dst []float32), opt ortrun.Options) ([]float32, error) {
	data, err := g.Marshal()
	if err != nil {
		return nil, fmt.Errorf("demo: %s: %w", g.Name, err)
	}
	in := g.Inputs[0]
	sess, err := ortrun.NewSession(g.Name, data, []string{in.Name}, []string{out}, opt)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	defer sess.Close()
	width := int64(1)
	for _, d := range in.Shape[1:] {
		width *= d
	}
	var res []float32
	for start := 0; start < n; start += batchSize {
		b := min(batchSize, n-start)
		x := make([]float32, int64(b)*width)
		for i := range b {
			fill(start+i, x[int64(i)*width:int64(i+1)*width])
		}
		y, err := sess.Run(ortrun.Tensor{Shape: append([]int64{int64(b)}, in.Shape[1:]...), Floats: x})
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		res = append(res, y[0].Floats...)
	}
	return res, nil
}

// Graph values; N is the batch.
var (
	imageValue    = onnx.Value{Name: inputName, Elem: onnx.Float, Shape: []int64{-1, 1, side, side}}
	flatValue     = onnx.Value{Name: "flat", Elem: onnx.Float, Shape: []int64{-1, flatDim}}
	featuresValue = onnx.Value{Name: featuresName, Elem: onnx.Float, Shape: []int64{-1, featureDim}}
	logitsValue   = onnx.Value{Name: logitsName, Elem: onnx.Float, Shape: []int64{-1, classes}}
)

// backboneGraph is image → flat, the part of A256 before the PCA.
func backboneGraph(conv []float32) *onnx.Graph {
	return &onnx.Graph{
		Name:         "demo_backbone",
		Inputs:       []onnx.Value{imageValue},
		Outputs:      []onnx.Value{flatValue},
		Initializers: []onnx.Tensor{convTensor(conv)},
		Nodes:        backboneNodes(),
	}
}

// projectionGraph is flat → features, so the head is fitted on the features
// exactly as the target model's PCA nodes compute them.
func projectionGraph(mean, basis []float32) *onnx.Graph {
	return &onnx.Graph{
		Name:         "demo_projection",
		Inputs:       []onnx.Value{flatValue},
		Outputs:      []onnx.Value{featuresValue},
		Initializers: pcaTensors(mean, basis),
		Nodes:        pcaNodes(),
	}
}

// targetGraph is the whole A256 classifier: image → features → logits.
func targetGraph(conv, mean, basis []float32, h *head.Head) *onnx.Graph {
	inits := append([]onnx.Tensor{convTensor(conv)}, pcaTensors(mean, basis)...)
	return &onnx.Graph{
		Name:         "demo_a256",
		Inputs:       []onnx.Value{imageValue},
		Outputs:      []onnx.Value{featuresValue, logitsValue},
		Initializers: append(inits, headTensors(h)...),
		Nodes:        slices.Concat(backboneNodes(), pcaNodes(), headNodes()),
	}
}

func backboneNodes() []onnx.Node {
	return []onnx.Node{
		{Op: "Conv", Inputs: []string{inputName, "conv_w"}, Outputs: []string{"conv"},
			Attrs: map[string]any{"kernel_shape": []int64{kernel, kernel}}},
		{Op: "Relu", Inputs: []string{"conv"}, Outputs: []string{"relu"}},
		{Op: "MaxPool", Inputs: []string{"relu"}, Outputs: []string{"pooled"},
			Attrs: map[string]any{"kernel_shape": []int64{poolSide, poolSide}, "strides": []int64{poolSide, poolSide}}},
		// Flatten on NCHW is channel-major, the order the PCA was fitted in.
		{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"flat"}, Attrs: map[string]any{"axis": 1}},
	}
}

func pcaNodes() []onnx.Node {
	return []onnx.Node{
		{Op: "Sub", Inputs: []string{"flat", "pca_mean"}, Outputs: []string{"centered"}},
		{Op: "MatMul", Inputs: []string{"centered", "pca_basis"}, Outputs: []string{featuresName}},
	}
}

func headNodes() []onnx.Node {
	return []onnx.Node{
		{Op: "Sub", Inputs: []string{featuresName, "head_mean"}, Outputs: []string{"head_centered"}},
		{Op: "Div", Inputs: []string{"head_centered", "head_std"}, Outputs: []string{"standardized"}},
		{Op: "MatMul", Inputs: []string{"standardized", "head_wt"}, Outputs: []string{"scores"}},
		{Op: "Add", Inputs: []string{"scores", "head_b"}, Outputs: []string{logitsName}},
	}
}

func convTensor(conv []float32) onnx.Tensor {
	return onnx.Tensor{Name: "conv_w", Dims: []int64{filters, 1, kernel, kernel}, Floats: conv}
}

func pcaTensors(mean, basis []float32) []onnx.Tensor {
	return []onnx.Tensor{
		{Name: "pca_mean", Dims: []int64{flatDim}, Floats: mean},
		{Name: "pca_basis", Dims: []int64{flatDim, featureDim}, Floats: basis},
	}
}

// headTensors lays the head out for MatMul: W is class-major, the graph
// wants it transposed, [dim, classes].
func headTensors(h *head.Head) []onnx.Tensor {
	wt := make([]float32, h.Dim*h.Classes)
	for c := range h.Classes {
		for j := range h.Dim {
			wt[j*h.Classes+c] = h.W[c*h.Dim+j]
		}
	}
	return []onnx.Tensor{
		{Name: "head_mean", Dims: []int64{int64(h.Dim)}, Floats: h.Mean},
		{Name: "head_std", Dims: []int64{int64(h.Dim)}, Floats: h.Std},
		{Name: "head_wt", Dims: []int64{int64(h.Dim), int64(h.Classes)}, Floats: wt},
		{Name: "head_b", Dims: []int64{int64(h.Classes)}, Floats: h.B},
	}
}
