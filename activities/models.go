package activities

import (
	"context"
	"errors"
	"fmt"
	"image"
	"path"
	"slices"
	"strconv"
	"strings"

	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"

	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/half"
	"dcd/internal/onnx"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/schemas"
)

// exposeModel returns the model ONNX Runtime runs for spec and the graph
// outputs to fetch, one per spec output: the model itself, or, when spec
// reads inner tensors, the model rewritten so they are graph outputs.
func exposeModel(data []byte, spec features.Spec) ([]byte, []string, error) {
	return onnx.ExposeOutputs(data, spec.Outputs)
}

// exposed lists the tensors whose graph output had to be added.
func exposed(tensors, names []string) []string {
	var e []string
	for i, t := range tensors {
		if names[i] != t && !slices.Contains(e, t) {
			e = append(e, t)
		}
	}
	return e
}

// fillPreprocess completes p from the model's image input: an empty layout
// and zero channels, height and width are read from its shape, and the
// sizes the config gives must match the shape where it is fixed.
func fillPreprocess(field modelField, path string, in ortrun.IO, p preprocess.Spec) (preprocess.Spec, error) {
	shape := []int64(in.Dimensions)
	if !ortrun.IsFloat32(in) {
		return p, invalid("config: %s: model %q input %q is %s, but DCD feeds images as float32 tensors", field.sub("input"), path, in.Name, in.String())
	}
	if len(shape) != 4 {
		return p, invalid("config: %s: model %q input %q has shape %v, but DCD feeds images as [N,C,H,W] (NCHW) or [N,H,W,C] (NHWC)", field.sub("input"), path, in.Name, shape)
	}
	layout := strings.ToUpper(strings.TrimSpace(p.Layout))
	if layout == "" {
		isChannels := func(d int64) bool {
			if p.Channels > 0 {
				return d == int64(p.Channels)
			}
			return d == 1 || d == 3
		}
		layout = preprocess.LayoutNCHW
		if isChannels(shape[3]) && !isChannels(shape[1]) {
			layout = preprocess.LayoutNHWC
		}
	}
	p.Layout = layout
	c, h, w := 1, 2, 3
	if layout == preprocess.LayoutNHWC {
		c, h, w = 3, 1, 2
	}
	for _, f := range []struct {
		name string
		v    *int
		d    int64
	}{{"channels", &p.Channels, shape[c]}, {"height", &p.Height, shape[h]}, {"width", &p.Width, shape[w]}} {
		switch {
		case *f.v == 0 && f.d <= 0:
			return p, invalid("config: %s: model %q input %q has a dynamic %s (shape %v), so the config must set it", field.sub("preprocess."+f.name), path, in.Name, f.name, shape)
		case *f.v == 0:
			*f.v = int(f.d)
		case f.d > 0 && int64(*f.v) != f.d:
			return p, invalid("config: %s is %d, but model %q input %q has shape %v, which as %s has %s %d", field.sub("preprocess."+f.name), *f.v, path, in.Name, shape, layout, f.name, f.d)
		}
	}
	if p.Channels != 1 && p.Channels != 3 {
		return p, invalid("config: %s: model %q input %q has shape %v, which as %s has %d channels, but DCD feeds 1 or 3 (is the layout right?)", field.sub("preprocess"), path, in.Name, shape, layout, p.Channels)
	}
	if err := p.Validate(); err != nil {
		return p, invalid("config: %s: %v (model %q input %q has shape %v)", field.sub("preprocess"), err, path, in.Name, shape)
	}
	if p.Channels == 1 {
		p.Order = "" // one channel has no order: the digest is the same without it
	}
	return p, nil
}

// probe runs the model once on two mid-gray images prepared as the pass
// will prepare every image, and returns the values per image of each
// output. It proves that the model accepts the preprocessing and a batch,
// and that every output is float32 with the batch first.
func (a *Activities) probe(field modelField, path string, model []byte, spec features.Spec, names []string, batch int, others []string) ([]int, error) {
	var opt ortrun.Options
	if a.Sessions != nil {
		opt = a.Sessions.opt
	}
	s, err := a.Sessions.open(path, model, []string{spec.Input}, names, opt)
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("config: %s: %v", field.sub("path"), err), "ModelLoad", err)
	}
	defer s.Close()
	p := spec.Preprocess
	gray := image.NewGray(image.Rect(0, 0, p.Width, p.Height))
	for i := range gray.Pix {
		gray.Pix[i] = 128
	}
	n := 2
	if batch > 0 {
		n = batch // what the model's input is fixed to
	}
	x := make([]float32, n*p.Size())
	for i := range n {
		if err := p.Fill(x[i*p.Size():(i+1)*p.Size()], gray); err != nil {
			return nil, invalid("config: %s: %v", field.sub("preprocess"), err)
		}
	}
	shape := []int64{int64(n), int64(p.Channels), int64(p.Height), int64(p.Width)}
	if p.Layout == preprocess.LayoutNHWC {
		shape = []int64{int64(n), int64(p.Height), int64(p.Width), int64(p.Channels)}
	}
	outs, err := s.Run(ortrun.Tensor{Shape: shape, Floats: x})
	if err != nil && len(others) > 0 {
		return nil, invalid("config: %s: model %q fails on a batch of %d images shaped %v: %v (DCD feeds the model its image input %q alone: its other inputs, %s, need values of their own in the graph, such as initializers)",
			field.sub(""), path, n, shape, err, spec.Input, strings.Join(others, ", "))
	}
	if err != nil {
		return nil, invalid("config: %s: model %q fails on a batch of %d images shaped %v: %v", field.sub(""), path, n, shape, err)
	}
	dims := make([]int, len(outs))
	for o, t := range outs {
		if t.Floats == nil || len(t.Shape) == 0 || t.Shape[0] != int64(n) || len(t.Floats) == 0 {
			return nil, invalid("config: %s: model %q tensor %q has shape %v for a batch of %d images; DCD wants float32 values with the batch first, [N, ...]", field.sub(spec.Columns[o]), path, spec.Outputs[o], t.Shape, n)
		}
		dims[o] = len(t.Floats) / n
	}
	return dims, nil
}

// checkDims fails when a batch of shard gives other values per image than
// the pass measured when it checked the model: vectors of different lengths
// cannot be compared, and a model whose output size depends on its input
// is not one DCD can use.
func (m ModelRef) checkDims(shard string, dims []int) error {
	for o, d := range dims {
		if o < len(m.Dims) && m.Dims[o] > 0 && d != m.Dims[o] {
			return m.dimError(shard, o, d)
		}
	}
	return nil
}

// checkStorable checks that a batch's features fit the type the model's
// feature files store: float16 holds magnitudes up to 65504 and rounds
// larger ones to ±Inf, which would rank neighbours by infinite distances.
func (m ModelRef) checkStorable(b embed.Batch) error {
	if m.Spec.StoredAs != schemas.Float16 {
		return nil
	}
	for o, vec := range b.Vectors {
		if i := half.Overflow(vec[:len(b.Images)*b.Dims[o]]); i >= 0 {
			return &embed.OutputError{Msg: fmt.Sprintf("embed: %s: output %q is %v for image %s, beyond float16's largest value (65504): store its features as float32 (stored_as: float32)",
				m.Path, m.Spec.Outputs[o], vec[i], b.Images[i/b.Dims[o]].URI)}
		}
	}
	return nil
}

// checkColumnDim is checkDims for one column of a feature file.
func (m ModelRef) checkColumnDim(shard, column string, dim int) error {
	o := slices.Index(m.Spec.Columns, column)
	if o < 0 || o >= len(m.Dims) || m.Dims[o] == 0 || dim == m.Dims[o] {
		return nil
	}
	return m.dimError(shard, o, dim)
}

func (m ModelRef) dimError(shard string, o, got int) error {
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf(
		"model %s: %s (tensor %q) has %d values per image in shard %s, but %d when the pass checked the model: a model's output size must not change between shards",
		m.Path, m.Spec.Columns[o], m.Spec.Outputs[o], got, shard, m.Dims[o]), "ModelOutput", nil)
}

// outputError makes an unusable model output (non-finite values, a wrong
// shape) a non-retryable error naming the shard; it is nil for other
// errors.
func outputError(err error, shard string) error {
	var oe *embed.OutputError
	if errors.As(err, &oe) {
		return temporal.NewNonRetryableApplicationError(fmt.Sprintf("%s (shard %s)", oe.Msg, shard), "ModelOutput", nil)
	}
	return nil
}

// modelField names the config field a model check's failure is about: a
// config's model is a field of its own (target.path, similarity.input …);
// the model an external trainer wrote is no field, is fed as the target
// is, and gives the scores retrain.trainer.output names.
type modelField struct {
	name    string // target, similarity
	trainer bool
}

// sub names the field's sub-field s: path, input, preprocess[.x], an
// output's column, or "" for the model as a whole.
func (f modelField) sub(s string) string {
	switch {
	case !f.trainer && s == "":
		return f.name
	case !f.trainer:
		return f.name + "." + s
	case s == "input" || strings.HasPrefix(s, "preprocess"):
		return "target." + s + " (the trainer's model is fed as the target is)"
	case s == "path" || s == "":
		return "retrain.trainer (the model it wrote)"
	default:
		return "retrain.trainer.output"
	}
}

// checkModelSpec completes a model's spec from the model and checks that it
// runs: outputs names the tensors read and columns the config field (and
// feature column) of each.
func (a *Activities) checkModelSpec(field modelField, m schemas.Model, data []byte, sum string, ins []ortrun.IO, input string, outputs, columns []string) (ModelRef, error) {
	i := slices.IndexFunc(ins, func(io ortrun.IO) bool { return io.Name == input })
	pre, err := fillPreprocess(field, m.Path, ins[i], m.Preprocess)
	if err != nil {
		return ModelRef{}, err
	}
	model, names, err := onnx.ExposeOutputs(data, outputs)
	if err != nil {
		var miss *onnx.MissingTensorError
		if errors.As(err, &miss) {
			o := slices.Index(outputs, miss.Tensor)
			return ModelRef{}, invalid("config: %s: model %q has no tensor %q; it may name a graph output or any node's output, such as %s",
				field.sub(columns[o]), m.Path, miss.Tensor, onnx.FormatOutputs(miss.Candidates))
		}
		return ModelRef{}, invalid("config: %s: %q: %v", field.sub("path"), m.Path, err)
	}
	spec := features.Spec{
		ModelDigest: sum, Input: input, Outputs: outputs, Columns: columns, Preprocess: pre,
		Exposed: exposed(outputs, names), StoredAs: m.StoredAs, Decoder: preprocess.DecoderVersion,
	}
	batch := max(int(ins[i].Dimensions[0]), 0) // a fixed batch size, or -1: any
	// The inputs DCD feeds nothing: ORT names one missing, and no more.
	var others []string
	for _, io := range ins {
		if io.Name != input {
			others = append(others, strconv.Quote(io.Name))
		}
	}
	dims, err := a.probe(field, m.Path, model, spec, names, batch, others)
	if err != nil {
		return ModelRef{}, err
	}
	return ModelRef{Path: m.Path, Spec: spec, Dims: dims, EP: m.EP, Batch: batch}, nil
}

// ReadModel reads an ONNX model, a key in def or an absolute URL (in a
// bucket of bs), with the data its weights keep in files beside it (as
// PyTorch's exporter writes them: model.onnx.data) read in, so that it is
// one model ONNX Runtime loads from memory, and its digest covers its
// weights; for a pass's sessions and checks, its export and an external
// trainer's alike.
func ReadModel(ctx context.Context, bs *store.Buckets, def *blob.Bucket, ref string) ([]byte, error) {
	// Read at most what a model read whole may hold: a config naming a
	// weights file or an archive by mistake is not read into memory.
	data, err := bs.ReadAtMost(ctx, def, ref, onnx.MaxInline)
	if errors.Is(err, store.ErrTooLarge) {
		return nil, invalid("model %s is over %d bytes, the most a model read whole may hold (is it the model, or its weights' file?)", ref, onnx.MaxInline)
	}
	if err != nil {
		return nil, err
	}
	var readErr error // the storage's, which a retry may pass
	data, err = onnx.Inline(data, func(location string) ([]byte, error) {
		beside, err := besideRef(ref, location)
		if err != nil {
			return nil, err
		}
		b, err := bs.ReadAtMost(ctx, def, beside, onnx.MaxInline)
		if !errors.Is(err, store.ErrTooLarge) { // the model's own fault, not storage's
			readErr = err
		}
		return b, err
	})
	if err != nil && readErr == nil {
		// The model's own: too large, a location outside its folder, a
		// file too short for its tensors.
		return nil, invalid("model %s: %v", ref, err)
	}
	return data, err
}

// besideRef is the key or URL of rel, a path relative to the folder of
// ref (a key or a URL), which it may not leave (as ONNX's checker has it).
func besideRef(ref, rel string) (string, error) {
	bucketURL, key := "", ref
	if store.IsURL(ref) {
		var err error
		if bucketURL, key, err = store.SplitURL(ref); err != nil {
			return "", err
		}
	}
	dir := path.Dir(key)
	k := path.Join(dir, rel)
	inside := strings.HasPrefix(k, dir+"/") || dir == "." && k != ".." && !strings.HasPrefix(k, "../")
	if rel == "" || path.IsAbs(rel) || !inside {
		return "", fmt.Errorf("location %q is not a file in the model's folder", rel)
	}
	if bucketURL == "" {
		return k, nil
	}
	return store.JoinURL(bucketURL, k)
}
