package workflows_test

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"gocloud.dev/blob"

	"dcd/internal/store"
	"dcd/schemas"
)

// Features stored as float16 (target.stored_as; the demo's similarity
// model is the target's features) take about half the bytes of float32
// ones, and select as they do: nearly the same images, with the same
// precision, and the retrained model fixes the failure. A pass switching
// to float16 after a float32 one embeds nothing again: it rounds the
// cached float32 features.
func TestFloat16FeaturesSelectAsFloat32(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	startWorker(t, c, b)
	ctx := context.Background()

	stamp := time.Now().UTC().Format("150405.000")
	want, err := runPass(t, c, "float32-features-"+stamp, cfg)
	if err != nil {
		t.Fatal(err)
	}
	halfCfg := cfg
	halfCfg.Target.StoredAs = " Float16 " // as a hand-written config may have it
	got, err := runPass(t, c, "float16-features-"+stamp, halfCfg.WithDefaults())
	if err != nil {
		t.Fatal(err)
	}

	g, w := method(t, got.Eval, schemas.MethodDCD), method(t, want.Eval, schemas.MethodDCD)
	none := method(t, got.Eval, schemas.MethodNone)
	t.Logf("float16: %d selected, precision %v, E_heldout %.3f; float32: %d, %v, %.3f", g.DebugTrainSize, *g.SelectionPrecision, g.HeldoutAccuracy,
		w.DebugTrainSize, *w.SelectionPrecision, w.HeldoutAccuracy)
	if gain := g.HeldoutAccuracy - none.HeldoutAccuracy; gain < 0.25 {
		t.Errorf("float16 features: E_heldout %.3f → %.3f, gain %.3f, want ≥ 0.25", none.HeldoutAccuracy, g.HeldoutAccuracy, gain)
	}
	if d := *g.SelectionPrecision - *w.SelectionPrecision; d < -0.01 || d > 0.01 {
		t.Errorf("selection precision %.3f from float16 features, %.3f from float32", *g.SelectionPrecision, *w.SelectionPrecision)
	}
	gotSel := selected(t, b, got.DebugTrain.Manifest)
	wantSel := selected(t, b, want.DebugTrain.Manifest)
	common := 0
	for uri := range gotSel {
		if wantSel[uri] {
			common++
		}
	}
	t.Logf("%d of the images selected from float32 features are selected from float16 ones too; %d of %d shards from the cache", common, got.CachedShards, got.Shards)
	// The debug-train sets' shards are cached only if they select alike.
	if common == len(wantSel) && common == len(gotSel) && got.CachedShards != got.Shards {
		t.Errorf("the float16 pass embedded %d of %d shards again, want none: the float32 cache has them all", got.Shards-got.CachedShards, got.Shards)
	}
	if len(wantSel) == 0 || float64(common) < 0.95*float64(len(wantSel)) || float64(common) < 0.95*float64(len(gotSel)) {
		t.Errorf("float16 features select %d images, float32 %d; %d in both, want ≥ 95%% of each", len(gotSel), len(wantSel), common)
	}

	// Each shard the target embedded is in the cache twice, in a folder
	// per spec: as float16 at most 60% of its float32 size. (The shared
	// bucket also holds other tests' models' features of the same shards:
	// a file pairs only with one of the same columns.)
	type file struct {
		key     string
		size    int64
		elem    arrow.Type
		columns string
	}
	byShard := map[string][]file{}
	for _, obj := range featureFiles(t, b) {
		f, err := store.OpenArrow(ctx, b, obj.Key, memory.NewGoAllocator())
		if err != nil {
			t.Fatal(err)
		}
		elem := f.Schema().Field(1).Type.(*arrow.FixedSizeListType).Elem().ID()
		var columns []string
		for _, fl := range f.Schema().Fields()[1:] {
			columns = append(columns, fmt.Sprintf("%s[%d]", fl.Name, fl.Type.(*arrow.FixedSizeListType).Len()))
		}
		f.Close()
		byShard[path.Base(obj.Key)] = append(byShard[path.Base(obj.Key)], file{obj.Key, obj.Size, elem, strings.Join(columns, ",")})
	}
	pairs := 0
	for _, files := range byShard {
		var f16, f32 *file
		for i := range files {
			if files[i].elem == arrow.FLOAT16 {
				f16 = &files[i]
			}
		}
		for i := range files {
			if f16 != nil && files[i].elem == arrow.FLOAT32 && files[i].columns == f16.columns {
				f32 = &files[i]
			}
		}
		if f16 == nil || f32 == nil {
			continue
		}
		pairs++
		if float64(f16.size) > 0.6*float64(f32.size) {
			t.Errorf("%s: %d bytes as float16, %s %d as float32", f16.key, f16.size, f32.key, f32.size)
		}
	}
	t.Logf("%d shards stored both ways", pairs)
	if pairs == 0 {
		t.Errorf("no shard's features are stored as float16 and as float32")
	}
}

// featureFiles lists the feature cache's files (not their parts).
func featureFiles(t *testing.T, b *blob.Bucket) []*blob.ListObject {
	t.Helper()
	var out []*blob.ListObject
	iter := b.List(&blob.ListOptions{Prefix: "features/"})
	for {
		obj, err := iter.Next(context.Background())
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(obj.Key, ".arrow") && !strings.Contains(obj.Key, ".parts/") {
			out = append(out, obj)
		}
	}
}

// selected reads the image URIs of a debug-train manifest.
func selected(t *testing.T, b *blob.Bucket, key string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	selection(t, b, key, func(uri string) int {
		out[uri] = true
		return 0
	})
	return out
}
