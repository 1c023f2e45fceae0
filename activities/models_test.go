package activities_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/features"
	"dcd/internal/half"
	"dcd/internal/onnx"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/schemas"
)

// world is a mem:// bucket with real activities over the real ONNX Runtime.
type world struct {
	t    testing.TB
	b    *blob.Bucket
	acts *activities.Activities
	mem  *memory.CheckedAllocator
	run  string
}

func newWorld(t testing.TB) *world {
	t.Helper()
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatalf("%v (run `make setup`)", err)
	}
	b, err := store.Open(context.Background(), "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	sessions := activities.NewSessions(ortrun.Options{Threads: 1}, ortrun.Options{Threads: 1})
	t.Cleanup(sessions.Close)
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) })
	return &world{t: t, b: b, mem: mem, run: "models-test",
		acts: &activities.Activities{Bucket: b, Mem: mem, Sessions: sessions, Decoders: 2}}
}

// do runs one activity outside a workflow and returns its error.
func (w *world) do(fn, in, out any) error {
	var ts testsuite.WorkflowTestSuite
	ts.SetLogger(log.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	env := ts.NewTestActivityEnvironment()
	env.RegisterActivity(w.acts)
	v, err := env.ExecuteActivity(fn, in)
	if err != nil {
		return err
	}
	return v.Get(out)
}

func (w *world) must(fn, in, out any) {
	w.t.Helper()
	if err := w.do(fn, in, out); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) put(key string, data []byte) {
	w.t.Helper()
	if err := w.b.WriteAll(context.Background(), key, data, nil); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) putModel(key string, g *onnx.Graph) []byte {
	w.t.Helper()
	data, err := g.Marshal()
	if err != nil {
		w.t.Fatal(err)
	}
	w.put(key, data)
	return data
}

// putImages writes the images as PNGs of an ImageFolder dataset and returns
// them in key order, as the shard lists them.
func (w *world) putImages(prefix string, imgs []image.Image) {
	w.t.Helper()
	for i, img := range imgs {
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			w.t.Fatal(err)
		}
		w.put(fmt.Sprintf("%sa/%03d.png", prefix, i), buf.Bytes())
	}
}

// classifierTarget writes classifier(false) at models/clf.onnx and checks
// it as the target, its features "pooled".
func (w *world) classifierTarget() activities.ModelRef {
	w.t.Helper()
	g, _ := classifier(false)
	w.putModel("models/clf.onnx", g)
	m, err := w.check(schemas.Config{Target: schemas.Model{Path: "models/clf.onnx", Features: "pooled", Logits: "logits"}}.WithDefaults().Target)
	if err != nil {
		w.t.Fatal(err)
	}
	return m
}

// check runs CheckModels for a target model.
func (w *world) check(m schemas.Model) (activities.ModelRef, error) {
	var res activities.CheckModelsResult
	err := w.do(w.acts.CheckModels, activities.CheckModelsInput{Target: m}, &res)
	return res.Target, err
}

// embed plans prefix as dataset ds (one shard) and embeds it with m.
func (w *world) embed(ds, prefix string, m activities.ModelRef) (activities.EmbedShardResult, error) {
	w.t.Helper()
	var plan activities.PlanResult
	w.must(w.acts.Plan, activities.PlanInput{Run: w.run, Name: ds, Dataset: schemas.Dataset{Prefix: prefix}, ShardSize: 1 << 20}, &plan)
	if plan.Shards != 1 {
		w.t.Fatalf("plan %+v, want one shard", plan)
	}
	var res activities.EmbedShardResult
	err := w.do(w.acts.EmbedShard, activities.EmbedShardInput{Run: w.run, Dataset: ds, Shard: 0, Model: m, BatchSize: 3, PartSize: 4}, &res)
	return res, err
}

// column loads one column of a feature file.
func (w *world) column(key, column string) *features.Matrix {
	w.t.Helper()
	m, err := features.Load(context.Background(), w.b, key, column, w.mem)
	if err != nil {
		w.t.Fatal(err)
	}
	return m
}

// randomImages makes n RGB images of w×h with random opaque colours, and
// one gray image, so channel order and gray→RGB both show.
func randomImages(seed uint64, n, w, h int) []image.Image {
	rng := rand.New(rand.NewPCG(seed, seed))
	var imgs []image.Image
	for i := 0; i < n; i++ {
		img := image.NewRGBA(image.Rect(0, 0, w, h))
		for j := 0; j < len(img.Pix); j += 4 {
			img.Pix[j], img.Pix[j+1], img.Pix[j+2], img.Pix[j+3] = uint8(rng.IntN(256)), uint8(rng.IntN(256)), uint8(rng.IntN(256)), 255
		}
		imgs = append(imgs, img)
	}
	g := image.NewGray(image.Rect(0, 0, w, h))
	for j := range g.Pix {
		g.Pix[j] = uint8(rng.IntN(256))
	}
	return append(imgs, g)
}

// rgb is pixel (x, y) of img as 8-bit R, G, B.
func rgb(img image.Image, x, y int) [3]float64 {
	c := color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
	return [3]float64{float64(c.R), float64(c.G), float64(c.B)}
}

func randomWeights(seed uint64, n int) []float32 {
	rng := rand.New(rand.NewPCG(seed, 1))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// near fails unless got equals want row for row within a relative 1e-4.
func near(t *testing.T, what string, got *features.Matrix, want [][]float64) {
	t.Helper()
	if len(got.URIs) != len(want) {
		t.Fatalf("%s: %d rows, want %d", what, len(got.URIs), len(want))
	}
	for i, row := range want {
		if got.Dim != len(row) {
			t.Fatalf("%s: dim %d, want %d", what, got.Dim, len(row))
		}
		for j, v := range row {
			if g := float64(got.Row(i)[j]); math.Abs(g-v) > 1e-4*(1+math.Abs(v)) {
				t.Fatalf("%s: row %d (%s) value %d: %v, computed by hand %v", what, i, got.URIs[i], j, g, v)
			}
		}
	}
}

var flattenShape = onnx.Tensor{Name: "flat_shape", Dims: []int64{2}, Ints: []int64{0, -1}}

// An NHWC model fed [0,1] values: the config gives no layout or size, the
// pass reads NHWC 4×5×3 from the model, and the features equal a fixed
// linear map of the pixels in NHWC order, computed here from the PNGs.
func TestNHWCModelUnitScale(t *testing.T) {
	w := newWorld(t)
	const H, W, C, D = 4, 5, 3, 6
	wf := randomWeights(1, H*W*C*D)
	w.putModel("models/nhwc.onnx", &onnx.Graph{
		Name:   "nhwc",
		Inputs: []onnx.Value{{Name: "pixels", Elem: onnx.Float, Shape: []int64{-1, H, W, C}}},
		Outputs: []onnx.Value{
			{Name: "embedding", Elem: onnx.Float, Shape: []int64{-1, D}},
			{Name: "scores", Elem: onnx.Float, Shape: []int64{-1, 2}},
		},
		Initializers: []onnx.Tensor{flattenShape, {Name: "wf", Dims: []int64{H * W * C, D}, Floats: wf}, {Name: "wl", Dims: []int64{D, 2}, Floats: randomWeights(2, 2*D)}},
		Nodes: []onnx.Node{
			{Op: "Reshape", Inputs: []string{"pixels", "flat_shape"}, Outputs: []string{"flat"}},
			{Op: "MatMul", Inputs: []string{"flat", "wf"}, Outputs: []string{"embedding"}},
			{Op: "MatMul", Inputs: []string{"embedding", "wl"}, Outputs: []string{"scores"}},
		},
	})
	imgs := randomImages(3, 7, W, H)
	w.putImages("nhwc/", imgs)

	m, err := w.check(schemas.Config{Target: schemas.Model{Path: "models/nhwc.onnx", Features: "embedding", Logits: "scores"}}.WithDefaults().Target)
	if err != nil {
		t.Fatal(err)
	}
	p := m.Spec.Preprocess
	if p.Layout != preprocess.LayoutNHWC || p.Channels != C || p.Height != H || p.Width != W || p.Scale != preprocess.ScaleUnit {
		t.Fatalf("preprocess from the model: %+v, want NHWC %dx%dx%d unit", p, C, H, W)
	}
	if m.Spec.Input != "pixels" || !slices.Equal(m.Dims, []int{D, 2}) || len(m.Spec.Exposed) != 0 {
		t.Fatalf("model ref %+v", m)
	}
	// Embedded first as float16, while nothing is cached, in parts of 4
	// images: the values must be the float32 ones below, rounded.
	narrowModel := schemas.Config{Target: schemas.Model{Path: "models/nhwc.onnx", Features: "embedding", Logits: "scores", StoredAs: schemas.Float16}}.WithDefaults().Target
	mh, err := w.check(narrowModel)
	if err != nil {
		t.Fatal(err)
	}
	resH, err := w.embed(activities.Pool, "nhwc/", mh)
	if err != nil {
		t.Fatal(err)
	}
	res, err := w.embed(activities.Pool, "nhwc/", m)
	if err != nil {
		t.Fatal(err)
	}
	if res.Cached || resH.Cached || res.FeatureKey == resH.FeatureKey {
		t.Fatalf("float32 %+v and float16 %+v: want two entries, both embedded", res, resH)
	}
	var want [][]float64
	for _, img := range imgs {
		row := make([]float64, D)
		for y := 0; y < H; y++ {
			for x := 0; x < W; x++ {
				px := rgb(img, x, y)
				for c := 0; c < C; c++ {
					for d := 0; d < D; d++ {
						row[d] += px[c] / 255 * float64(wf[((y*W+x)*C+c)*D+d])
					}
				}
			}
		}
		want = append(want, row)
	}
	near(t, "embedding", w.column(res.FeatureKey, "features"), want)
	for _, column := range m.Spec.Columns {
		wide, narrow := w.column(res.FeatureKey, column), w.column(resH.FeatureKey, column)
		if !slices.Equal(wide.URIs, narrow.URIs) || len(wide.Data) != len(narrow.Data) {
			t.Fatalf("%s: float16 rows %v, float32 %v", column, narrow.URIs, wide.URIs)
		}
		for i, v := range wide.Data {
			if r := half.ToFloat32(half.FromFloat32(v)); narrow.Data[i] != r {
				t.Fatalf("%s value %d: %v as float16, want %v rounded to %v", column, i, narrow.Data[i], v, r)
			}
		}
	}
}

// An NCHW RGB model with ImageNet mean/std: the pass reads layout and size
// from the model; the features are the per-channel means of the normalised
// input (GlobalAveragePool) and the logits a linear map of the pixels in
// NCHW order, both computed here from the PNGs.
func TestNCHWModelMeanStd(t *testing.T) {
	w := newWorld(t)
	const C, H, W, K = 3, 6, 4, 2
	wl := randomWeights(4, C*H*W*K)
	w.putModel("models/nchw.onnx", &onnx.Graph{
		Name:   "nchw",
		Inputs: []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, C, H, W}}},
		Outputs: []onnx.Value{
			{Name: "features", Elem: onnx.Float, Shape: []int64{-1, C}},
			{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, K}},
		},
		Initializers: []onnx.Tensor{flattenShape, {Name: "wl", Dims: []int64{C * H * W, K}, Floats: wl}},
		Nodes: []onnx.Node{
			{Op: "GlobalAveragePool", Inputs: []string{"image"}, Outputs: []string{"pooled"}},
			{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"features"}},
			{Op: "Reshape", Inputs: []string{"image", "flat_shape"}, Outputs: []string{"flat"}},
			{Op: "MatMul", Inputs: []string{"flat", "wl"}, Outputs: []string{"logits"}},
		},
	})
	imgs := randomImages(5, 5, W, H)
	w.putImages("nchw/", imgs)
	mean, std := []float32{0.485, 0.456, 0.406}, []float32{0.229, 0.224, 0.225}

	m, err := w.check(schemas.Config{Target: schemas.Model{Path: "models/nchw.onnx", Features: "features", Logits: "logits",
		Preprocess: preprocess.Spec{Mean: mean, Std: std}}}.WithDefaults().Target)
	if err != nil {
		t.Fatal(err)
	}
	if p := m.Spec.Preprocess; p.Layout != preprocess.LayoutNCHW || p.Channels != C || p.Height != H || p.Width != W {
		t.Fatalf("preprocess from the model: %+v, want NCHW %dx%dx%d", p, C, H, W)
	}
	res, err := w.embed(activities.Test, "nchw/", m)
	if err != nil {
		t.Fatal(err)
	}
	var wantF, wantL [][]float64
	for _, img := range imgs {
		f, l := make([]float64, C), make([]float64, K)
		for c := 0; c < C; c++ {
			for y := 0; y < H; y++ {
				for x := 0; x < W; x++ {
					v := (rgb(img, x, y)[c]/255 - float64(mean[c])) / float64(std[c])
					f[c] += v / (H * W)
					for k := 0; k < K; k++ {
						l[k] += v * float64(wl[((c*H+y)*W+x)*K+k])
					}
				}
			}
		}
		wantF, wantL = append(wantF, f), append(wantL, l)
	}
	near(t, "features", w.column(res.FeatureKey, "features"), wantF)
	near(t, "logits", w.column(res.FeatureKey, "logits"), wantL)
}

// classifier is image [N,3,4,4] → 1×1 Conv → Relu → GlobalAveragePool
// "pooled" [N,5,1,1] → Flatten → MatMul "logits"; with pooledOut, "pooled"
// is a graph output too.
func classifier(pooledOut bool) (*onnx.Graph, []float32) {
	wc := randomWeights(6, 5*3)
	g := &onnx.Graph{
		Name:    "clf",
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 3, 4, 4}}},
		Outputs: []onnx.Value{{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, 3}}},
		Initializers: []onnx.Tensor{
			{Name: "wc", Dims: []int64{5, 3, 1, 1}, Floats: wc},
			{Name: "wh", Dims: []int64{5, 3}, Floats: randomWeights(7, 15)},
		},
		Nodes: []onnx.Node{
			{Op: "Conv", Inputs: []string{"image", "wc"}, Outputs: []string{"conv"}},
			{Op: "Relu", Inputs: []string{"conv"}, Outputs: []string{"act"}},
			{Op: "GlobalAveragePool", Inputs: []string{"act"}, Outputs: []string{"pooled"}},
			{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"flat"}},
			{Op: "MatMul", Inputs: []string{"flat", "wh"}, Outputs: []string{"logits"}},
		},
	}
	if pooledOut {
		g.Outputs = append(g.Outputs, onnx.Value{Name: "pooled", Elem: onnx.Float, Shape: []int64{-1, 5, 1, 1}})
	}
	return g, wc
}

// The penultimate rewrite: features name an inner [N,C,1,1] tensor of a
// model whose only output is logits. The pass's features equal that tensor
// flattened, as read from the same model with the tensor as a graph output,
// and as computed here; the model in storage is left as it is.
func TestInnerTensorAsFeatures(t *testing.T) {
	w := newWorld(t)
	inner, wc := classifier(false)
	original := w.putModel("models/clf.onnx", inner)
	outer, _ := classifier(true)
	w.putModel("models/clf-out.onnx", outer)
	imgs := randomImages(8, 6, 4, 4)
	w.putImages("clf/", imgs)
	cfg := func(path string) schemas.Model {
		return schemas.Config{Target: schemas.Model{Path: path, Features: "pooled", Logits: "logits"}}.WithDefaults().Target
	}

	mi, err := w.check(cfg("models/clf.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	mo, err := w.check(cfg("models/clf-out.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(mi.Spec.Exposed, []string{"pooled"}) || mo.Spec.Exposed != nil {
		t.Fatalf("exposed: %q (inner) and %q (output), want [pooled] and none", mi.Spec.Exposed, mo.Spec.Exposed)
	}
	if !slices.Equal(mi.Dims, []int{5, 3}) || !slices.Equal(mo.Dims, []int{5, 3}) {
		t.Fatalf("dims %v and %v, want [5 3]", mi.Dims, mo.Dims)
	}
	// The rewrite is part of the spec, so the cache tells the two apart.
	plain := mi.Spec
	plain.Exposed = nil
	if plain.Digest() == mi.Spec.Digest() {
		t.Error("the spec digest ignores the rewrite")
	}

	ri, err := w.embed(activities.Pool, "clf/", mi)
	if err != nil {
		t.Fatal(err)
	}
	var ro activities.EmbedShardResult
	w.must(w.acts.EmbedShard, activities.EmbedShardInput{Run: w.run, Dataset: activities.Pool, Model: mo, BatchSize: 4, PartSize: 100}, &ro)
	got, ref := w.column(ri.FeatureKey, "features"), w.column(ro.FeatureKey, "features")
	if got.Dim != 5 || !slices.Equal(got.URIs, ref.URIs) {
		t.Fatalf("features dim %d, rows %v; as a graph output: dim %d, rows %v", got.Dim, got.URIs, ref.Dim, ref.URIs)
	}
	for i := range ref.Data {
		if got.Data[i] != ref.Data[i] {
			t.Fatalf("value %d: %v through the rewrite, %v as a graph output", i, got.Data[i], ref.Data[i])
		}
	}
	var want [][]float64
	for _, img := range imgs {
		row := make([]float64, 5)
		for y := 0; y < 4; y++ {
			for x := 0; x < 4; x++ {
				px := rgb(img, x, y)
				for o := 0; o < 5; o++ {
					var v float64
					for c := 0; c < 3; c++ {
						v += px[c] / 255 * float64(wc[o*3+c])
					}
					row[o] += max(v, 0) / 16
				}
			}
		}
		want = append(want, row)
	}
	near(t, "pooled", got, want)
	near(t, "logits", w.column(ri.FeatureKey, "logits"), matrixRows(w.column(ro.FeatureKey, "logits")))

	stored, err := w.b.ReadAll(context.Background(), "models/clf.onnx")
	if err != nil || !bytes.Equal(stored, original) {
		t.Errorf("the model in storage changed (err %v)", err)
	}
}

func matrixRows(m *features.Matrix) [][]float64 {
	var rows [][]float64
	for i := range m.URIs {
		var r []float64
		for _, v := range m.Row(i) {
			r = append(r, float64(v))
		}
		rows = append(rows, r)
	}
	return rows
}

// failsNaming checks a non-retryable error that names every one of want.
func failsNaming(t *testing.T, err error, want ...string) {
	t.Helper()
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) {
		t.Fatalf("got %v, want an application error", err)
	}
	if !appErr.NonRetryable() {
		t.Errorf("error %v is retryable: no retry can fix it", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}
}

// gapModel averages each channel of an input of the given shape.
func gapModel(shape ...int64) *onnx.Graph {
	return &onnx.Graph{
		Name:    "gap",
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: shape}},
		Outputs: []onnx.Value{{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, -1}}},
		Nodes: []onnx.Node{
			{Op: "GlobalAveragePool", Inputs: []string{"image"}, Outputs: []string{"pooled"}},
			{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"logits"}},
		},
	}
}

func TestBadModels(t *testing.T) {
	w := newWorld(t)
	inner, _ := classifier(false)
	w.putModel("models/clf.onnx", inner)
	w.putModel("models/dynamic.onnx", gapModel(-1, 3, -1, -1))
	target := func(path, features string, p preprocess.Spec) schemas.Model {
		return schemas.Config{Target: schemas.Model{Path: path, Features: features, Logits: "logits", Preprocess: p}}.WithDefaults().Target
	}

	t.Run("unknown tensor", func(t *testing.T) {
		_, err := w.check(target("models/clf.onnx", "avgpool", preprocess.Spec{}))
		failsNaming(t, err, "target.features", "models/clf.onnx", `"avgpool"`, `"pooled" (GlobalAveragePool)`, `"flat" (Flatten)`)
	})
	t.Run("dynamic input without sizes", func(t *testing.T) {
		_, err := w.check(target("models/dynamic.onnx", "logits", preprocess.Spec{}))
		failsNaming(t, err, "target.preprocess.height", "models/dynamic.onnx", `"image"`, "dynamic")
	})
	t.Run("dynamic input with sizes", func(t *testing.T) {
		m, err := w.check(target("models/dynamic.onnx", "logits", preprocess.Spec{Height: 9, Width: 7}))
		if err != nil {
			t.Fatal(err)
		}
		if p := m.Spec.Preprocess; p.Channels != 3 || p.Height != 9 || p.Width != 7 || !slices.Equal(m.Dims, []int{3, 3}) {
			t.Errorf("spec %+v dims %v", p, m.Dims)
		}
	})
	t.Run("size against a fixed shape", func(t *testing.T) {
		_, err := w.check(target("models/clf.onnx", "pooled", preprocess.Spec{Width: 224}))
		failsNaming(t, err, "target.preprocess.width", "224", "models/clf.onnx")
	})
	t.Run("classes against the logits", func(t *testing.T) {
		in := activities.CheckModelsInput{Target: target("models/clf.onnx", "pooled", preprocess.Spec{}), Classes: 3}
		var res activities.CheckModelsResult
		if err := w.do(w.acts.CheckModels, in, &res); err != nil {
			t.Fatalf("3 classes for 3 logits: %v", err)
		}
		in.Classes = 4
		failsNaming(t, w.do(w.acts.CheckModels, in, &res), "classes: there are 4", "gives 3 logits", "models/clf.onnx")
		in.ClassesFile = "labels.txt"
		failsNaming(t, w.do(w.acts.CheckModels, in, &res), "classes_file (labels.txt)", "there are 4")
	})
	t.Run("a second input the graph does not give", func(t *testing.T) {
		w.putModel("models/scaled.onnx", &onnx.Graph{
			Name:    "scaled",
			Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 3, 4, 4}}, {Name: "scale", Elem: onnx.Float, Shape: []int64{1}}},
			Outputs: []onnx.Value{{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, -1}}},
			Nodes: []onnx.Node{
				{Op: "Mul", Inputs: []string{"image", "scale"}, Outputs: []string{"scaled"}},
				{Op: "GlobalAveragePool", Inputs: []string{"scaled"}, Outputs: []string{"pooled"}},
				{Op: "Flatten", Inputs: []string{"pooled"}, Outputs: []string{"logits"}},
			},
		})
		m := target("models/scaled.onnx", "logits", preprocess.Spec{})
		m.Input = "image"
		_, err := w.check(m)
		failsNaming(t, err, "target: model", "models/scaled.onnx", `image input "image" alone`, `its other inputs, "scale", need values`)
	})
	t.Run("similarity", func(t *testing.T) {
		sim := target("models/clf.onnx", "nope", preprocess.Spec{})
		var res activities.CheckModelsResult
		err := w.do(w.acts.CheckModels, activities.CheckModelsInput{Target: target("models/clf.onnx", "pooled", preprocess.Spec{}), Similarity: &sim}, &res)
		failsNaming(t, err, "similarity.features", `"nope"`)
	})
}

// A model exported without a dynamic batch axis (torch.onnx.export
// without dynamic_axes) embeds in batches of its fixed size, a short last
// one filled out, as one with any batch embeds: the same features, image
// for image, a shard of 7 in batches of 1 and of 3.
func TestFixedBatchModel(t *testing.T) {
	w := newWorld(t)
	w.putImages("fixed/", randomImages(9, 6, 8, 8))
	var want *features.Matrix
	for _, batch := range []int64{-1, 1, 3} {
		path := fmt.Sprintf("models/batch%d.onnx", batch)
		w.putModel(path, gapModel(batch, 3, 8, 8))
		m, err := w.check(schemas.Config{Target: schemas.Model{Path: path, Features: "logits", Logits: "logits"}}.WithDefaults().Target)
		if err != nil {
			t.Fatalf("batch %d: %v", batch, err)
		}
		if m.Batch != int(max(batch, 0)) || !slices.Equal(m.Dims, []int{3, 3}) {
			t.Fatalf("batch %d: model checked as batch %d, dims %v", batch, m.Batch, m.Dims)
		}
		res, err := w.embed("fixed-"+strconv.Itoa(int(batch+1)), "fixed/", m)
		if err != nil || res.Images != 7 {
			t.Fatalf("batch %d: %+v, %v", batch, res, err)
		}
		got := w.column(res.FeatureKey, "features")
		if want == nil {
			want = got
		} else if !slices.Equal(got.URIs, want.URIs) || !slices.Equal(got.Data, want.Data) {
			t.Errorf("batch %d: features %v of %v, want %v of %v", batch, got.Data, got.URIs, want.Data, want.URIs)
		}
	}
}

// A model whose output is not finite, or whose output size changes between
// shards, fails the shard without retries, naming the model and the shard.
func TestBadOutputs(t *testing.T) {
	w := newWorld(t)
	// features = log(x - 2): NaN for every pixel value in [0,1].
	w.putModel("models/nan.onnx", &onnx.Graph{
		Name:         "nan",
		Inputs:       []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 2, 2}}},
		Outputs:      []onnx.Value{{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, 4}}},
		Initializers: []onnx.Tensor{{Name: "two", Dims: []int64{}, Floats: []float32{2}}},
		Nodes: []onnx.Node{
			{Op: "Sub", Inputs: []string{"image", "two"}, Outputs: []string{"shifted"}},
			{Op: "Log", Inputs: []string{"shifted"}, Outputs: []string{"log"}},
			{Op: "Flatten", Inputs: []string{"log"}, Outputs: []string{"logits"}},
		},
	})
	// features has 5 values per image when the batch's brightest pixel is
	// above 0.4, else 1: the check's gray images give 5, a dark shard 1.
	w.putModel("models/varying.onnx", &onnx.Graph{
		Name:    "varying",
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 2, 2}}},
		Outputs: []onnx.Value{{Name: "logits", Elem: onnx.Float, Shape: []int64{-1, -1}}},
		Initializers: []onnx.Tensor{
			{Name: "threshold", Dims: []int64{}, Floats: []float32{0.4}},
			{Name: "four", Dims: []int64{1}, Ints: []int64{4}},
			{Name: "one", Dims: []int64{1}, Ints: []int64{1}},
			{Name: "zero", Dims: []int64{1}, Ints: []int64{0}},
			{Name: "axis1", Dims: []int64{1}, Ints: []int64{1}},
			{Name: "row", Dims: []int64{1, 5}, Floats: []float32{1, 2, 3, 4, 5}},
		},
		Nodes: []onnx.Node{
			{Op: "ReduceMax", Inputs: []string{"image"}, Outputs: []string{"max"}, Attrs: map[string]any{"keepdims": 0}},
			{Op: "Greater", Inputs: []string{"max", "threshold"}, Outputs: []string{"bright"}},
			{Op: "Cast", Inputs: []string{"bright"}, Outputs: []string{"b"}, Attrs: map[string]any{"to": onnx.Int64}},
			{Op: "Mul", Inputs: []string{"b", "four"}, Outputs: []string{"b4"}},
			{Op: "Add", Inputs: []string{"b4", "one"}, Outputs: []string{"end"}},
			{Op: "Slice", Inputs: []string{"row", "zero", "end", "axis1"}, Outputs: []string{"part"}},
			{Op: "Shape", Inputs: []string{"image"}, Outputs: []string{"shape"}},
			{Op: "Slice", Inputs: []string{"shape", "zero", "one"}, Outputs: []string{"n"}},
			{Op: "Concat", Inputs: []string{"n", "one"}, Outputs: []string{"n1"}, Attrs: map[string]any{"axis": 0}},
			{Op: "Expand", Inputs: []string{"part", "n1"}, Outputs: []string{"logits"}},
		},
	})
	gray := func(v uint8, n int) []image.Image {
		var imgs []image.Image
		for i := 0; i < n; i++ {
			g := image.NewGray(image.Rect(0, 0, 2, 2))
			for j := range g.Pix {
				g.Pix[j] = v
			}
			imgs = append(imgs, g)
		}
		return imgs
	}
	w.putImages("bright/", gray(250, 5))
	w.putImages("dark/", gray(10, 5))
	target := func(path string) schemas.Model {
		return schemas.Config{Target: schemas.Model{Path: path, Features: "logits", Logits: "logits"}}.WithDefaults().Target
	}

	t.Run("not finite", func(t *testing.T) {
		m, err := w.check(target("models/nan.onnx"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = w.embed(activities.Train, "bright/", m)
		failsNaming(t, err, "models/nan.onnx", activities.ShardKey(w.run, activities.Train, 0), "NaN")
	})
	t.Run("dimension changes between shards", func(t *testing.T) {
		m, err := w.check(target("models/varying.onnx"))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(m.Dims, []int{5, 5}) {
			t.Fatalf("dims %v, want [5 5]", m.Dims)
		}
		if _, err := w.embed(activities.Pool, "bright/", m); err != nil {
			t.Fatal(err)
		}
		_, err = w.embed(activities.ErrorSample, "dark/", m)
		failsNaming(t, err, "models/varying.onnx", activities.ShardKey(w.run, activities.ErrorSample, 0), "1 values per image", "5 when the pass checked")
	})
}

// Shards whose feature files disagree with the checked model (a cache
// written by another version, say) fail when read, naming model and shard.
func TestLoadedDimsChecked(t *testing.T) {
	w := newWorld(t)
	w.putImages("q/", randomImages(9, 2, 4, 4))
	m := w.classifierTarget()
	if _, err := w.embed(activities.ErrorSample, "q/", m); err != nil {
		t.Fatal(err)
	}
	wrong := m
	wrong.Dims = []int{7, 3}
	var res activities.QueriesResult
	err := w.do(w.acts.Queries, activities.QueriesInput{Run: w.run, Shards: 1, Model: wrong}, &res)
	failsNaming(t, err, "models/clf.onnx", activities.ShardKey(w.run, activities.ErrorSample, 0), "5 values per image", "7 when")
}

// A model configured for CUDA embeds on the CUDA execution provider; on the
// CPU build of ONNX Runtime that `make setup` installs, the shard fails
// without retries and says which provider libraries are missing.
func TestModelExecutionProvider(t *testing.T) {
	w := newWorld(t)
	const H, W, D = 3, 3, 4
	w.putModel("models/ep.onnx", &onnx.Graph{
		Name:         "ep",
		Inputs:       []onnx.Value{{Name: "x", Elem: onnx.Float, Shape: []int64{-1, 1, H, W}}},
		Outputs:      []onnx.Value{{Name: "f", Elem: onnx.Float, Shape: []int64{-1, D}}, {Name: "l", Elem: onnx.Float, Shape: []int64{-1, D}}},
		Initializers: []onnx.Tensor{flattenShape, {Name: "w", Dims: []int64{H * W, D}, Floats: randomWeights(5, H*W*D)}},
		Nodes: []onnx.Node{
			{Op: "Reshape", Inputs: []string{"x", "flat_shape"}, Outputs: []string{"flat"}},
			{Op: "MatMul", Inputs: []string{"flat", "w"}, Outputs: []string{"f"}},
			{Op: "Relu", Inputs: []string{"f"}, Outputs: []string{"l"}},
		},
	})
	w.putImages("ep/", randomImages(6, 3, W, H))
	cfg := schemas.Config{Target: schemas.Model{Path: "models/ep.onnx", Features: "f", Logits: "l", EP: "cuda"}}.WithDefaults()
	m, err := w.check(cfg.Target)
	if err != nil {
		t.Fatal(err)
	}
	if m.EP != "cuda" {
		t.Fatalf("model ref EP %q, want cuda", m.EP)
	}
	_, err = w.embed(activities.Train, "ep/", m)
	failsNaming(t, err, "models/ep.onnx", "cuda", "libonnxruntime_providers_cuda.so")

	m.EP = "cpu"
	if _, err := w.embed(activities.Test, "ep/", m); err != nil {
		t.Fatalf("the same model on the cpu provider: %v", err)
	}
}

// A recurring pass checks its models again: the same bytes used the same
// way are answered from the worker's first check, and a model rewritten
// at the same path, or used another way, is checked afresh.
func TestModelChecksRemembered(t *testing.T) {
	w := newWorld(t)
	clf, _ := classifier(true)
	w.putModel("models/m.onnx", clf)
	target := func(features string) schemas.Model {
		return schemas.Config{Target: schemas.Model{Path: "models/m.onnx", Features: features, Logits: "logits"}}.WithDefaults().Target
	}
	first, err := w.check(target("pooled"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := w.check(target("pooled"))
	if err != nil || !reflect.DeepEqual(again, first) {
		t.Fatalf("second check %+v, %v; first %+v", again, err, first)
	}
	// Used another way: features from another tensor, of 3 values.
	other, err := w.check(target("flat"))
	if err != nil || !slices.Equal(other.Dims, []int{5, 3}) || other.Spec.Digest() == first.Spec.Digest() {
		t.Fatalf("features %q: dims %v, %v", "flat", other.Dims, err)
	}
	// Another model at the same path, of 3 channels where the first had
	// 5: its own digest, and its own sizes.
	w.putModel("models/m.onnx", gapModel(-1, 3, 4, 4))
	rewritten, err := w.check(target("pooled"))
	if err != nil || rewritten.Spec.ModelDigest == first.Spec.ModelDigest || !slices.Equal(rewritten.Dims, []int{3, 3}) {
		t.Fatalf("rewritten model: digest %s (was %s), dims %v (were %v), %v", rewritten.Spec.ModelDigest, first.Spec.ModelDigest, rewritten.Dims, first.Dims, err)
	}
}

// BenchmarkCheckModels: CheckModels on a worker that has not checked the
// model (first: it loads the model in ONNX Runtime twice and runs it), and
// on one that has (again: reading and hashing the model remain).
func BenchmarkCheckModels(b *testing.B) {
	w := newWorld(b)
	clf, _ := classifier(true)
	data, err := clf.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	if err := w.b.WriteAll(context.Background(), "models/m.onnx", data, nil); err != nil {
		b.Fatal(err)
	}
	in := activities.CheckModelsInput{Target: schemas.Config{Target: schemas.Model{Path: "models/m.onnx", Features: "pooled", Logits: "logits"}}.WithDefaults().Target}
	b.Cleanup(func() { w.acts.Sessions.Close() }) // the last of those made below
	for _, again := range []bool{false, true} {
		b.Run(map[bool]string{false: "first", true: "again"}[again], func(b *testing.B) {
			for b.Loop() {
				if !again {
					b.StopTimer()
					w.acts.Sessions.Close()
					w.acts.Sessions = activities.NewSessions(ortrun.Options{Threads: 1}, ortrun.Options{Threads: 1})
					b.StartTimer()
				}
				if _, err := w.acts.CheckModels(context.Background(), in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// An E_sample image that could not be read (not yet uploaded) is a reject
// of the shard's cache entry; once it is there, the next pass embeds the
// shard again instead of reusing the entry, whose content (keys) is the
// same. So is a test or E_heldout image, whose absence changes the
// accuracies. A pool shard keeps its entry: its gone images are not read
// again.
func TestUnreadImageReadOnceFixed(t *testing.T) {
	for _, ds := range []string{activities.ErrorSample, activities.Test, activities.ErrorHeldout} {
		t.Run(ds, func(t *testing.T) { checkUnreadReadOnceFixed(t, ds) })
	}
}

// oneImageLate makes a manifest q.csv of three images whose last,
// q/a/002.png, is not there yet; upload puts it there.
func oneImageLate(t *testing.T) (w *world, m activities.ModelRef, upload func()) {
	w = newWorld(t)
	w.putImages("q/", randomImages(11, 3, 4, 4))
	m = w.classifierTarget()
	late, err := w.b.ReadAll(context.Background(), "q/a/002.png")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.b.Delete(context.Background(), "q/a/002.png"); err != nil {
		t.Fatal(err)
	}
	w.put("q.csv", []byte("uri,label\nq/a/000.png,a\nq/a/001.png,a\nq/a/002.png,a\n"))
	return w, m, func() { w.put("q/a/002.png", late) }
}

func checkUnreadReadOnceFixed(t *testing.T, set string) {
	w, m, upload := oneImageLate(t)
	embedWith := func(ds string, m activities.ModelRef) activities.EmbedShardResult {
		t.Helper()
		var plan activities.PlanResult
		w.must(w.acts.Plan, activities.PlanInput{Run: w.run, Name: ds, Dataset: schemas.Dataset{Manifest: "q.csv"}, ShardSize: 1 << 20}, &plan)
		var res activities.EmbedShardResult
		w.must(w.acts.EmbedShard, activities.EmbedShardInput{Run: w.run, Dataset: ds, Shard: 0, Model: m, BatchSize: 3, PartSize: 4}, &res)
		return res
	}
	embed := func(ds string) activities.EmbedShardResult { return embedWith(ds, m) }
	for _, ds := range []string{set, activities.Pool} {
		if res := embed(ds); res.Rejects != 1 {
			t.Fatalf("%s, one image missing: %+v, want it rejected", ds, res)
		}
	}
	if res := embed(set); !res.Cached || res.Rejects != 1 {
		t.Errorf("again, still missing: %+v, want the entry reused", res)
	}
	upload()
	// Switched to float16, the shard is not narrowed from its float32
	// entry, whose reject reads now: it is embedded.
	half := m
	half.Spec.StoredAs = schemas.Float16
	if res := embedWith(set, half); res.Cached || res.Rejects != 0 {
		t.Errorf("as float16, once uploaded: %+v, want the shard embedded again", res)
	}
	if res := embed(activities.Pool); !res.Cached || res.Rejects != 1 {
		t.Errorf("the pool's shard once uploaded: %+v, want the entry reused", res)
	}
	if res := embed(set); res.Cached || res.Rejects != 0 || res.Images != 3 {
		t.Errorf("once uploaded: %+v, want the shard embedded again, all 3 images", res)
	}
	if res := embed(activities.Pool); !res.Cached || res.Rejects != 0 {
		t.Errorf("the pool's shard after E_sample's, of the same content: %+v, want the new entry", res)
	}
}

// A pool or train image that could not be read stays a reject of its
// shard's cache entry once it reads, unless the pass asks to read such
// images again (starter run -reread): then the shard is embedded again,
// looked up alone or in a batch, though many images listed before it are
// gone for good.
func TestRereadUnread(t *testing.T) {
	for _, ds := range []string{activities.Pool, activities.Train} {
		t.Run(ds, func(t *testing.T) {
			w, m, upload := oneImageLate(t)
			var manifest strings.Builder
			manifest.WriteString("uri,label\n")
			for i := range 20 {
				fmt.Fprintf(&manifest, "gone/%02d.png,a\n", i)
			}
			manifest.WriteString("q/a/000.png,a\nq/a/001.png,a\nq/a/002.png,a\n")
			w.put("q.csv", []byte(manifest.String()))
			var plan activities.PlanResult
			w.must(w.acts.Plan, activities.PlanInput{Run: w.run, Name: ds, Dataset: schemas.Dataset{Manifest: "q.csv"}, ShardSize: 1 << 20}, &plan)
			embed := func(reread bool) activities.EmbedShardResult {
				t.Helper()
				var res activities.EmbedShardResult
				w.must(w.acts.EmbedShard, activities.EmbedShardInput{Run: w.run, Dataset: ds, Shard: 0, Model: m, BatchSize: 3, PartSize: 4, Reread: reread}, &res)
				return res
			}
			if res := embed(true); res.Rejects != 21 {
				t.Fatalf("one image missing: %+v, want it rejected", res)
			}
			if res := embed(true); !res.Cached || res.Rejects != 21 {
				t.Errorf("read again, still missing: %+v, want the entry reused", res)
			}
			upload()
			if res := embed(false); !res.Cached || res.Rejects != 21 {
				t.Errorf("once uploaded: %+v, want the entry reused", res)
			}
			var looked activities.CachedShardsResult
			w.must(w.acts.CachedShards, activities.CachedShardsInput{Run: w.run, Dataset: ds, First: 0, End: 1, Model: m, Reread: true}, &looked)
			if len(looked.Shards) != 1 || looked.Shards[0].Cached {
				t.Errorf("looked up in a batch to be read again once uploaded: %+v, want it not cached", looked)
			}
			if res := embed(true); res.Cached || res.Rejects != 20 || res.Images != 3 {
				t.Errorf("read again once uploaded: %+v, want the shard embedded again, all 3 images", res)
			}
		})
	}
}

// A pass's models are checked with this worker's image decoders, whose
// version the spec records; a worker with other decoders (one upgraded
// while the pass ran) embeds nothing for it, so that no pass mixes two
// decodings of its images.
func TestEmbedRefusesOtherDecoders(t *testing.T) {
	w := newWorld(t)
	w.putImages("q/", randomImages(12, 2, 4, 4))
	m := w.classifierTarget()
	if m.Spec.Decoder != preprocess.DecoderVersion {
		t.Fatalf("checked spec's decoders %d, want this worker's %d", m.Spec.Decoder, preprocess.DecoderVersion)
	}
	m.Spec.Decoder++
	// Retried, as another worker of the pass's version may take it.
	_, err := w.embed(activities.ErrorSample, "q/", m)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("checked with version %d", m.Spec.Decoder)) || !strings.Contains(err.Error(), "start it again") {
		t.Errorf("embedding for a pass of other decoders: %v, want it refused, saying so", err)
	}
}

// A model or classes file in a store that is not to be reached as the
// config says (here an https:// endpoint that answers in plain HTTP) is a
// setting to fix: the check fails at once naming the field, rather than
// after a retry policy's minutes.
func TestConfigFileUnreachable(t *testing.T) {
	w := newWorld(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "dcd")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "dcd")
	t.Setenv("AWS_MAX_ATTEMPTS", "1")
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	at := "s3://b/%s?endpoint=" + strings.Replace(plain.URL, "http:", "https:", 1) + "&use_path_style=true&region=us-east-1"
	_, err := w.check(schemas.Config{Target: schemas.Model{Path: fmt.Sprintf(at, "m.onnx"), Features: "f", Logits: "l"}}.WithDefaults().Target)
	failsNaming(t, err, "config: target.path", "HTTP response to HTTPS client")
	var classes []string
	err = w.do(w.acts.Classes, activities.ClassesInput{File: fmt.Sprintf(at, "classes.txt")}, &classes)
	failsNaming(t, err, "config: classes_file", "HTTP response to HTTPS client")
}

// A test set of which no image decodes fails the evaluation saying why,
// by one of its images.
func TestEvaluateNothingEmbedded(t *testing.T) {
	w := newWorld(t)
	w.put("t/a/0.png", []byte("not a PNG"))
	w.put("t/a/1.png", []byte("nor this"))
	w.putImages("h/", randomImages(13, 2, 4, 4))
	m := w.classifierTarget()
	if _, err := w.embed(activities.Test, "t/", m); err != nil {
		t.Fatal(err)
	}
	if _, err := w.embed(activities.ErrorHeldout, "h/", m); err != nil {
		t.Fatal(err)
	}
	var res activities.EvaluateResult
	err := w.do(w.acts.Evaluate, activities.EvaluateInput{Run: w.run, Method: "none", Model: m, Classes: []string{"a", "b", "c"}, TestShards: 1, HeldoutShards: 1}, &res)
	failsNaming(t, err, "data.test: no image could be embedded (the first, t/a/0.png: preprocess: decode: not a JPEG, PNG, GIF, BMP or WebP image, the formats DCD decodes: image: unknown format)")
}
