package activities_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"go.temporal.io/sdk/temporal"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/half"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/schemas"
)

// searchWorld is the models tests' world (a mem:// bucket and the
// activities over it), with helpers for the search steps.
type searchWorld struct{ *world }

func newSearchWorld(t *testing.T) *searchWorld { return &searchWorld{newWorld(t)} }

type neighbor struct {
	q, rank int32
	dist    float32
	id      int64
	uri     string
}

func (w *searchWorld) readNeighbors(key string) []neighbor {
	w.t.Helper()
	f, err := store.OpenArrow(context.Background(), w.b, key, w.mem)
	if err != nil {
		w.t.Fatal(err)
	}
	defer f.Close()
	var out []neighbor
	for r := 0; r < f.NumRecords(); r++ {
		rec, err := f.Record(r)
		if err != nil {
			w.t.Fatal(err)
		}
		for i := 0; i < int(rec.NumRows()); i++ {
			out = append(out, neighbor{
				q:    rec.Column(0).(*array.Int32).Value(i),
				rank: rec.Column(1).(*array.Int32).Value(i),
				dist: rec.Column(2).(*array.Float32).Value(i),
				id:   rec.Column(3).(*array.Int64).Value(i),
				uri:  rec.Column(4).(*array.String).Value(i),
			})
		}
	}
	return out
}

// MergeTopK folds partials with a linear merge; it must equal sorting all
// candidates by (distance, id), dropping repeated ids, and keeping K.
func TestMergeTopKEqualsSort(t *testing.T) {
	w := newSearchWorld(t)
	ctx := context.Background()
	const run, shards, queries, k = "merge", 7, 5, 4
	rng := rand.New(rand.NewPCG(1, 1))
	all := make([][]neighbor, queries)
	for s := 0; s < shards; s++ {
		rb := array.NewRecordBuilder(w.mem, schemas.Neighbors)
		for q := int32(0); q < queries; q++ {
			var list []neighbor
			for j := 0; j < rng.IntN(k+1); j++ { // some lists shorter than k, some empty
				id := int64(s*100 + rng.IntN(100))
				if (s == 0 || s == 3) && j == 0 {
					id = 42 // the same image in two shards' partials...
				}
				d := float32(rng.IntN(6)) // ...and many equal distances
				if id == 42 {
					d = 1
				}
				list = append(list, neighbor{q: q, dist: d, id: id, uri: fmt.Sprintf("pool/%d.png", id)})
			}
			slices.SortFunc(list, func(a, b neighbor) int {
				if a.dist != b.dist {
					return int(a.dist - b.dist)
				}
				return int(a.id - b.id)
			})
			list = slices.CompactFunc(list, func(a, b neighbor) bool { return a.id == b.id })
			for r, n := range list {
				rb.Field(0).(*array.Int32Builder).Append(q)
				rb.Field(1).(*array.Int32Builder).Append(int32(r))
				rb.Field(2).(*array.Float32Builder).Append(n.dist)
				rb.Field(3).(*array.Int64Builder).Append(n.id)
				rb.Field(4).(*array.StringBuilder).Append(n.uri)
				rb.Field(5).(*array.StringBuilder).Append("0")
				rb.Field(6).(*array.StringBuilder).Append("")
				rb.Field(7).(*array.StringBuilder).Append("")
			}
			all[q] = append(all[q], list...)
		}
		rec := rb.NewRecord()
		if err := store.WriteArrow(ctx, w.b, activities.TopKKey(run, "", s), schemas.Neighbors, w.mem, rec); err != nil {
			t.Fatal(err)
		}
		rec.Release()
		rb.Release()
	}
	var res activities.MergeTopKResult
	w.must(w.acts.MergeTopK, activities.MergeTopKInput{Run: run, Shards: shards, Queries: queries, K: k}, &res)
	got := w.readNeighbors(res.Key)
	var want []neighbor
	for q, list := range all {
		slices.SortFunc(list, func(a, b neighbor) int {
			if a.dist != b.dist {
				return int(a.dist - b.dist)
			}
			return int(a.id - b.id)
		})
		list = slices.CompactFunc(list, func(a, b neighbor) bool { return a.id == b.id })
		for r, n := range list[:min(k, len(list))] {
			n.q, n.rank = int32(q), int32(r)
			want = append(want, n)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("merged:\n%v\nwant:\n%v", got, want)
	}

	// A partial missing among those read ahead fails the merge, naming it.
	partial2, err := w.b.ReadAll(ctx, activities.TopKKey(run, "", 2))
	if err != nil {
		t.Fatal(err)
	}
	w.b.Delete(ctx, activities.TopKKey(run, "", 2))
	err = w.do(w.acts.MergeTopK, activities.MergeTopKInput{Run: run, Shards: shards, Queries: queries, K: k}, &res)
	if err == nil || !strings.Contains(err.Error(), activities.TopKKey(run, "", 2)) {
		t.Errorf("merge with partial 2 missing: %v, want an error naming it", err)
	}
	// (partial 2, restored under the scan from the first merge's inputs)
	w.b.WriteAll(ctx, activities.TopKKey(run, "scan1", 2), partial2, nil)
	// Keyed, a scan's partials are its own: another's (a straggler of an
	// earlier pass under this ID) where they were once kept changes
	// nothing.
	for s := range shards {
		if s == 2 {
			continue // deleted above: written again below
		}
		data, err := w.b.ReadAll(ctx, activities.TopKKey(run, "", s))
		if err != nil {
			t.Fatal(err)
		}
		if err := w.b.WriteAll(ctx, activities.TopKKey(run, "scan1", s), data, nil); err != nil {
			t.Fatal(err)
		}
	}
	stray, _ := w.b.ReadAll(ctx, activities.TopKKey(run, "", 1))
	for _, key := range []string{activities.TopKKey(run, "", 0), activities.TopKKey(run, "scan0", 0)} {
		if err := w.b.WriteAll(ctx, key, stray, nil); err != nil {
			t.Fatal(err)
		}
	}
	keyed := activities.MergeTopKInput{Run: run, Shards: shards, Queries: queries, K: k, Scan: "scan1", Keyed: true}
	w.must(w.acts.MergeTopK, keyed, &res)
	if got := w.readNeighbors(res.Key); !slices.Equal(got, want) {
		t.Errorf("keyed merge beside another's partial:\n%v\nwant:\n%v", got, want)
	}
	// A partial of more queries than the pass has is not its scan's: a
	// clear failure, not an index out of range.
	keyed.Queries = queries - 1
	if err := w.do(w.acts.MergeTopK, keyed, &res); err == nil || !strings.Contains(err.Error(), "not of this pass's scan") {
		t.Errorf("merge of a partial of more queries: %v, want it refused", err)
	}

	// Once merged, the other scans' partials are gone (in the
	// background), this scan's kept for a retried merge.
	for deadline := time.Now().Add(5 * time.Second); w.exists(activities.TopKKey(run, "", 0)) || w.exists(activities.TopKKey(run, "scan0", 0)); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("an earlier scan's partial is still there after the merge")
		}
	}
	if !w.exists(activities.TopKKey(run, "scan1", 0)) {
		t.Error("the scan's own partial was deleted")
	}
}

// cachedShard writes a pool shard whose features are cached, and queries.
func (w *searchWorld) cachedShard(run string, spec features.Spec, rows, queries, dim int, seed uint64) {
	w.t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 2))
	vecs := func(n int) []float32 {
		v := make([]float32, n*dim)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	sh := &dataset.Shard{}
	var images []embed.Image
	for i := 0; i < rows; i++ {
		it := dataset.Item{ID: int64(1000 + i), Key: fmt.Sprintf("pool/%03d.png", i), Label: "1"}
		sh.Items = append(sh.Items, it)
		images = append(images, embed.Image{ID: it.ID, URI: it.Key})
	}
	if err := store.WriteAll(ctx, w.b, activities.ShardKey(run, activities.Pool, 0), sh.Marshal()); err != nil {
		w.t.Fatal(err)
	}
	key := features.Key(spec, sh.Digest())
	rec := features.Record(w.mem, []string{"features"}, embed.Batch{Images: images, Vectors: [][]float32{vecs(rows)}, Dims: []int{dim}}, spec.StoredAs)
	defer rec.Release()
	if err := store.WriteArrow(ctx, w.b, key, rec.Schema(), w.mem, rec); err != nil {
		w.t.Fatal(err)
	}
	if err := store.WriteAll(ctx, w.b, key+".rejects.json", []byte("[]")); err != nil {
		w.t.Fatal(err)
	}
	w.writeQueries(run, vecs(queries), queries, dim)
}

func (w *searchWorld) writeQueries(run string, v []float32, n, dim int) {
	w.t.Helper()
	images := make([]embed.Image, n)
	for i := range images {
		images[i] = embed.Image{URI: fmt.Sprintf("q/%d.png", i)}
	}
	rec := features.Record(w.mem, []string{"features"}, embed.Batch{Images: images, Vectors: [][]float32{v}, Dims: []int{dim}}, "")
	defer rec.Release()
	if err := store.WriteArrow(context.Background(), w.b, activities.RunKey(run, "queries.arrow"), rec.Schema(), w.mem, rec); err != nil {
		w.t.Fatal(err)
	}
}

// A cached pool shard is searched by EmbedShard itself when K > 0, with
// the same partial result TopKShard writes; and a search sees queries
// rewritten under the same key, not the worker's cached copy.
func TestEmbedShardSearchesCachedShard(t *testing.T) {
	w := newSearchWorld(t)
	const run, dim, k = "fused", 8, 3
	spec := features.Spec{ModelDigest: "m", Input: "image", Outputs: []string{"features"}, Columns: []string{"features"},
		Preprocess: preprocess.Spec{Channels: 1, Height: 2, Width: 2}}
	w.cachedShard(run, spec, 50, 6, dim, 1)
	ref := activities.ModelRef{Path: "m.onnx", Spec: spec}

	var emb activities.EmbedShardResult
	w.must(w.acts.EmbedShard, activities.EmbedShardInput{Run: run, Dataset: activities.Pool, Shard: 0, Model: ref, BatchSize: 4, PartSize: 8, K: k}, &emb)
	if !emb.Cached || emb.TopK == nil || emb.TopK.Rows != 6*k || emb.Images != 50 {
		t.Fatalf("EmbedShard on a cached shard with K: %+v (TopK %+v)", emb, emb.TopK)
	}
	fused := w.readNeighbors(emb.TopK.Key)
	var topk activities.TopKShardResult
	w.must(w.acts.TopKShard, activities.TopKShardInput{Run: run, Shard: 0, Model: ref, K: k}, &topk)
	if separate := w.readNeighbors(topk.Key); !slices.Equal(fused, separate) {
		t.Fatalf("EmbedShard's search %v differs from TopKShard's %v", fused, separate)
	}

	var noK activities.EmbedShardResult
	w.must(w.acts.EmbedShard, activities.EmbedShardInput{Run: run, Dataset: activities.Pool, Shard: 0, Model: ref, BatchSize: 4, PartSize: 8}, &noK)
	if noK.TopK != nil {
		t.Fatalf("EmbedShard searched without K: %+v", noK.TopK)
	}

	// New queries under the same key: the next search uses them.
	w.writeQueries(run, make([]float32, 2*dim), 2, dim)
	w.must(w.acts.TopKShard, activities.TopKShardInput{Run: run, Shard: 0, Model: ref, K: k}, &topk)
	if got := w.readNeighbors(topk.Key); len(got) != 2*k || slices.Equal(got[:k], fused[:k]) {
		t.Fatalf("after new queries: %v", got)
	}
}

// A float16 spec whose shard is cached as float32 is served from that
// entry, rounded, without the model (there is none here): the new entry's
// values are the float32 ones rounded, and the shard is searched. A
// float16 entry is never widened for a float32 spec: it lost precision.
func TestEmbedShardNarrowsFloat32Cache(t *testing.T) {
	w := newSearchWorld(t)
	ctx := context.Background()
	const run, dim, k = "narrow", 8, 3
	wide := features.Spec{ModelDigest: "m", Input: "image", Outputs: []string{"features"}, Columns: []string{"features"},
		Preprocess: preprocess.Spec{Channels: 1, Height: 2, Width: 2}}
	w.cachedShard(run, wide, 50, 6, dim, 1)
	narrow := wide
	narrow.StoredAs = schemas.Float16
	ref := activities.ModelRef{Path: "no-such-model.onnx", Spec: narrow}

	var emb activities.EmbedShardResult
	w.must(w.acts.EmbedShard, activities.EmbedShardInput{Run: run, Dataset: activities.Pool, Shard: 0, Model: ref, BatchSize: 4, K: k, CachedOnly: true}, &emb)
	if !emb.Cached || emb.Images != 50 || emb.TopK == nil || emb.TopK.Rows != 6*k {
		t.Fatalf("EmbedShard, float16 over a float32 cache: %+v (TopK %+v)", emb, emb.TopK)
	}
	src, err := features.Load(ctx, w.b, features.Key(wide, strings.TrimSuffix(path.Base(emb.FeatureKey), ".arrow")), "features", w.mem)
	if err != nil {
		t.Fatal(err)
	}
	got, err := features.Load(ctx, w.b, emb.FeatureKey, "features", w.mem)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.URIs, src.URIs) || len(got.Data) != len(src.Data) {
		t.Fatalf("float16 entry: %d rows %v, float32 %d rows", len(got.URIs), got.URIs, len(src.URIs))
	}
	for i, v := range src.Data {
		if want := half.ToFloat32(half.FromFloat32(v)); got.Data[i] != want {
			t.Fatalf("value %d: %v, want %v rounded to %v", i, got.Data[i], v, want)
		}
	}
	if f, err := store.OpenArrow(ctx, w.b, emb.FeatureKey, w.mem); err != nil {
		t.Fatal(err)
	} else {
		if elem := f.Schema().Field(1).Type.(*arrow.FixedSizeListType).Elem().ID(); elem != arrow.FLOAT16 {
			t.Errorf("the new entry stores %v", elem)
		}
		f.Close()
	}

	// The other way round: a shard cached only as float16 is not cached
	// for float32.
	const run2 = "widen"
	other := narrow
	other.ModelDigest = "m2"
	w.cachedShard(run2, other, 20, 2, dim, 2)
	otherWide := other
	otherWide.StoredAs = ""
	var none activities.EmbedShardResult
	w.must(w.acts.EmbedShard, activities.EmbedShardInput{Run: run2, Dataset: activities.Pool, Shard: 0, Model: activities.ModelRef{Path: "no-such-model.onnx", Spec: otherWide}, CachedOnly: true}, &none)
	if none.Cached {
		t.Fatalf("a float16 entry served a float32 spec: %+v", none)
	}

	// A damaged float32 entry is passed over: the shard is embedded again.
	// (A first call, on the entry still whole, says where the keys are.)
	const run3 = "damaged"
	damaged := wide
	damaged.ModelDigest = "m3"
	w.cachedShard(run3, damaged, 20, 2, dim, 3)
	var sh activities.EmbedShardResult
	damagedNarrow := damaged
	damagedNarrow.StoredAs = schemas.Float16
	w.must(w.acts.EmbedShard, activities.EmbedShardInput{Run: run3, Dataset: activities.Pool, Shard: 0, Model: activities.ModelRef{Path: "no-such-model.onnx", Spec: damagedNarrow}, CachedOnly: true}, &sh)
	damagedKey := features.Key(damaged, strings.TrimSuffix(path.Base(sh.FeatureKey), ".arrow"))
	if err := store.WriteAll(ctx, w.b, damagedKey, []byte("not arrow")); err != nil {
		t.Fatal(err)
	}
	w.b.Delete(ctx, sh.FeatureKey)
	w.b.Delete(ctx, sh.FeatureKey+".rejects.json")
	var again activities.EmbedShardResult
	w.must(w.acts.EmbedShard, activities.EmbedShardInput{Run: run3, Dataset: activities.Pool, Shard: 0, Model: activities.ModelRef{Path: "no-such-model.onnx", Spec: damagedNarrow}, CachedOnly: true}, &again)
	if again.Cached {
		t.Fatalf("a damaged float32 entry served a float16 spec: %+v", again)
	}

	// A value float16 cannot hold fails the shard without retries, naming
	// the image, instead of storing ±Inf.
	const run4 = "overflow"
	big := wide
	big.ModelDigest = "m4"
	w.cachedShard(run4, big, 20, 2, dim, 4)
	var wideRes activities.EmbedShardResult
	w.must(w.acts.EmbedShard, activities.EmbedShardInput{Run: run4, Dataset: activities.Pool, Shard: 0, Model: activities.ModelRef{Path: "no-such-model.onnx", Spec: big}, CachedOnly: true}, &wideRes)
	m, err := features.Load(ctx, w.b, wideRes.FeatureKey, "features", w.mem)
	if err != nil {
		t.Fatal(err)
	}
	m.Data[3*dim+1] = 70000
	images := make([]embed.Image, len(m.URIs))
	for i, u := range m.URIs {
		images[i].URI = u
	}
	rec := features.Record(w.mem, []string{"features"}, embed.Batch{Images: images, Vectors: [][]float32{m.Data}, Dims: []int{dim}}, "")
	defer rec.Release()
	if err := store.WriteArrow(ctx, w.b, wideRes.FeatureKey, rec.Schema(), w.mem, rec); err != nil {
		t.Fatal(err)
	}
	bigNarrow := big
	bigNarrow.StoredAs = schemas.Float16
	err = w.do(w.acts.EmbedShard, activities.EmbedShardInput{Run: run4, Dataset: activities.Pool, Shard: 0, Model: activities.ModelRef{Path: "no-such-model.onnx", Spec: bigNarrow}, CachedOnly: true}, &activities.EmbedShardResult{})
	var appErr *temporal.ApplicationError
	shard := activities.ShardKey(run4, activities.Pool, 0)
	if !errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), m.URIs[3]) || !strings.Contains(err.Error(), "float16") ||
		!strings.Contains(err.Error(), "no-such-model.onnx") || !strings.Contains(err.Error(), shard) {
		t.Errorf("narrowing a value of 70000: %v, want a final error naming %s, float16, the model and shard %s", err, m.URIs[3], shard)
	}
}
