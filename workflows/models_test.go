package workflows_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/temporal"

	"dcd/activities"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/onnx"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/schemas"
)

// A pass whose config leaves the input's layout and size to the model, and
// whose similarity features are an inner tensor of the demo model (its
// MaxPool output, [N,C,h,w], not a graph output): the pass runs through the
// dev server, its query vectors equal that tensor flattened, as computed
// here by running the model directly, and the selection still fixes the
// failure.
func TestPassWithModelDefaultsAndInnerFeatures(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	startWorker(t, c, b)
	ctx := context.Background()
	stamp := time.Now().UTC().Format("150405.000")

	cfg.Target.Preprocess = preprocess.Spec{}
	cfg.Similarity = &schemas.Model{Path: cfg.Target.Path, Features: "pooled"}
	cfg = cfg.WithDefaults()
	res, err := runPass(t, c, "inner-features-"+stamp, cfg)
	if err != nil {
		t.Fatal(err)
	}
	none, dcd := method(t, res.Eval, "none"), method(t, res.Eval, "dcd")
	t.Logf("test %.3f → %.3f, E_heldout %.3f → %.3f, %d pool images picked", none.TestAccuracy, dcd.TestAccuracy,
		none.HeldoutAccuracy, dcd.HeldoutAccuracy, dcd.DebugTrainSize)
	if none.TestAccuracy < 0.9 {
		t.Errorf("test accuracy before the pass %.3f: the target's preprocessing read from the model is wrong", none.TestAccuracy)
	}
	if gain := dcd.HeldoutAccuracy - none.HeldoutAccuracy; gain < 0.25 {
		t.Errorf("E_heldout accuracy %.3f → %.3f: gain %.3f, want ≥ 0.25", none.HeldoutAccuracy, dcd.HeldoutAccuracy, gain)
	}

	// The queries are the E_sample images' "flat" tensor (Flatten of
	// "pooled"), run here outside the pass.
	queries, err := features.Load(ctx, b, activities.RunKey(res.RunID, "queries.arrow"), "features", memory.NewGoAllocator())
	if err != nil {
		t.Fatal(err)
	}
	model, err := b.ReadAll(ctx, cfg.Target.Path)
	if err != nil {
		t.Fatal(err)
	}
	exposed, names, err := onnx.ExposeOutputs(model, []string{"flat"})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := ortrun.NewSession("direct", exposed, []string{"image"}, names, ortrun.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	e := &embed.Embedder{Name: "direct", Session: sess, BatchSize: 8,
		Spec: preprocess.Spec{Channels: 1, Height: 28, Width: 28}.WithDefaults()}
	n := min(8, len(queries.URIs))
	var images []embed.Image
	for _, u := range queries.URIs[:n] {
		images = append(images, embed.Image{URI: u})
	}
	var want embed.Batch
	if _, err := e.Embed(ctx, images, func(ctx context.Context, k string) ([]byte, error) { return b.ReadAll(ctx, k) },
		func(bt embed.Batch) error { want = bt; return nil }); err != nil {
		t.Fatal(err)
	}
	if queries.Dim != want.Dims[0] {
		t.Fatalf("query vectors have %d values, the flattened tensor %d", queries.Dim, want.Dims[0])
	}
	for i, w := range want.Vectors[0] {
		if g := queries.Data[i]; math.Abs(float64(g-w)) > 1e-5*(1+math.Abs(float64(w))) {
			t.Fatalf("query value %d: %v, the model run directly gives %v", i, g, w)
		}
	}
}

// Model mistakes fail the pass before any image is read, naming the field.
func TestPassBadModelConfig(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	startWorker(t, c, b)
	stamp := time.Now().UTC().Format("150405.000")

	t.Run("unknown tensor", func(t *testing.T) {
		bad := cfg
		bad.Similarity = &schemas.Model{Path: cfg.Target.Path, Features: "avgpool"}
		_, err := runPass(t, c, "bad-tensor-"+stamp, bad.WithDefaults())
		assertFailsNaming(t, err, "similarity.features", `"avgpool"`, cfg.Target.Path, `"pooled" (MaxPool)`)
	})
	t.Run("size against the model", func(t *testing.T) {
		bad := cfg
		bad.Target.Preprocess.Height = 32
		_, err := runPass(t, c, "bad-size-"+stamp, bad)
		assertFailsNaming(t, err, "target.preprocess.height", "32", "28")
	})
}

// assertFailsNaming checks a non-retryable application error naming every
// one of want.
func assertFailsNaming(t *testing.T, err error, want ...string) {
	t.Helper()
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) {
		t.Fatalf("got %v, want an application error", err)
	}
	if !appErr.NonRetryable() {
		t.Errorf("error %v is retryable: no retry can fix a bad model config", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}
}
