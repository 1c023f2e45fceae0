package activities_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/preprocess"
	"dcd/internal/store"
)

// cachedPool writes n pool shards of rows images each, cached but for
// those new names, and queries; it returns the similarity model's ref.
func (w *searchWorld) cachedPool(run string, n, rows, queries, dim int, new ...int) activities.ModelRef {
	w.t.Helper()
	ctx := context.Background()
	spec := features.Spec{ModelDigest: "m", Input: "image", Outputs: []string{"features"}, Columns: []string{"features"},
		Preprocess: preprocess.Spec{Channels: 1, Height: 2, Width: 2}}
	rng := rand.New(rand.NewPCG(7, 7))
	vecs := func(n int) []float32 {
		v := make([]float32, n*dim)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	for s := range n {
		sh := &dataset.Shard{}
		var images []embed.Image
		for i := range rows {
			it := dataset.Item{ID: int64(s*rows + i), Key: fmt.Sprintf("pool/%d-%03d.png", s, i), Label: "1"}
			sh.Items = append(sh.Items, it)
			images = append(images, embed.Image{ID: it.ID, URI: it.Key})
		}
		if err := store.WriteAll(ctx, w.b, activities.ShardKey(run, activities.Pool, s), sh.Marshal()); err != nil {
			w.t.Fatal(err)
		}
		if slices.Contains(new, s) {
			continue
		}
		key := features.Key(spec, sh.Digest())
		rec := features.Record(w.mem, []string{"features"}, embed.Batch{Images: images, Vectors: [][]float32{vecs(rows)}, Dims: []int{dim}}, "")
		err := store.WriteArrow(ctx, w.b, key, rec.Schema(), w.mem, rec)
		rec.Release()
		if err != nil {
			w.t.Fatal(err)
		}
		if err := store.WriteAll(ctx, w.b, key+".rejects.json", []byte("[]")); err != nil {
			w.t.Fatal(err)
		}
	}
	w.writeQueries(run, vecs(queries), queries, dim)
	return activities.ModelRef{Path: "m.onnx", Spec: spec}
}

func (w *searchWorld) exists(key string) bool {
	w.t.Helper()
	ok, err := w.b.Exists(context.Background(), key)
	if err != nil {
		w.t.Fatal(err)
	}
	return ok
}

// A batch whose shards are all cached writes one partial for them, not
// one each, and the merge over it finds exactly the neighbours it finds
// over the shards' own partials. A batch with a shard missing writes the
// others' own partials, as without a batch.
func TestCachedShardsWriteOnePartial(t *testing.T) {
	w := newSearchWorld(t)
	const run, scan, shards, rows, queries, dim, k = "batch", "scan-1", 6, 20, 5, 8, 4
	ref := w.cachedPool(run, shards, rows, queries, dim, 5) // shard 5 is new
	merge := activities.MergeTopKInput{Run: run, Shards: 5, Queries: queries, K: k, Scan: scan}
	// An earlier pass's range, under its own scan's name: never read.
	w.put(activities.TopKRangeKey(run, "scan-0", 0, 5), []byte("an earlier scan's"))

	var batch activities.CachedShardsResult
	w.must(w.acts.CachedShards, activities.CachedShardsInput{Run: run, Dataset: activities.Pool, First: 1, End: 5, Model: ref, K: k, Scan: scan}, &batch)
	if len(batch.Shards) != 4 {
		t.Fatalf("%d results for 4 shards", len(batch.Shards))
	}
	for j, r := range batch.Shards {
		if !r.Cached || r.TopK == nil || r.TopK.Key != activities.TopKRangeKey(run, scan, 1, 5) {
			t.Errorf("shard %d: %+v (TopK %+v), want found and searched into the range", 1+j, r, r.TopK)
		}
		if w.exists(activities.TopKKey(run, "", 1+j)) {
			t.Errorf("shard %d's own partial written beside the range's", 1+j)
		}
	}
	var own activities.TopKShardResult
	w.must(w.acts.TopKShard, activities.TopKShardInput{Run: run, Shard: 0, Model: ref, K: k}, &own)
	var res activities.MergeTopKResult
	w.must(w.acts.MergeTopK, merge, &res)
	got := w.readNeighbors(res.Key)

	// The same shards searched one by one.
	if err := w.b.Delete(context.Background(), activities.TopKRangeKey(run, scan, 1, 5)); err != nil {
		t.Fatal(err)
	}
	for s := 1; s < 5; s++ {
		w.must(w.acts.TopKShard, activities.TopKShardInput{Run: run, Shard: s, Model: ref, K: k}, &own)
	}
	w.must(w.acts.MergeTopK, merge, &res)
	if want := w.readNeighbors(res.Key); len(got) != queries*k || !slices.Equal(got, want) {
		t.Fatalf("merged over the range's partial:\n%v\nover the shards' own:\n%v", got, want)
	}

	// Shard 5 is not cached: the batch writes 3's and 4's own partials,
	// and a range an earlier execution of this scan wrote (a reset that
	// planned the pool again) goes, or the merge would take it.
	for _, s := range []int{3, 4} {
		if err := w.b.Delete(context.Background(), activities.TopKKey(run, "", s)); err != nil {
			t.Fatal(err)
		}
	}
	w.put(activities.TopKRangeKey(run, scan, 3, 6), []byte("an earlier execution's"))
	batch = activities.CachedShardsResult{}
	w.must(w.acts.CachedShards, activities.CachedShardsInput{Run: run, Dataset: activities.Pool, First: 3, End: 6, Model: ref, K: k, Scan: scan}, &batch)
	if r := batch.Shards[2]; r.Cached || r.TopK != nil {
		t.Errorf("shard 5, not cached: %+v", r)
	}
	if w.exists(activities.TopKRangeKey(run, scan, 3, 6)) {
		t.Error("a range's partial there for a batch with a shard missing")
	}
	for _, s := range []int{3, 4} {
		if r := batch.Shards[s-3]; !r.Cached || r.TopK == nil || r.TopK.Key != activities.TopKKey(run, "", s) || !w.exists(r.TopK.Key) {
			t.Errorf("shard %d: %+v (TopK %+v), want its own partial", s, r, r.TopK)
		}
	}
	// Keyed, those own partials are the scan's, where its merge reads them.
	batch = activities.CachedShardsResult{}
	w.must(w.acts.CachedShards, activities.CachedShardsInput{Run: run, Dataset: activities.Pool, First: 3, End: 6, Model: ref, K: k, Scan: scan, Keyed: true}, &batch)
	for _, s := range []int{3, 4} {
		if r := batch.Shards[s-3]; r.TopK == nil || r.TopK.Key != activities.TopKKey(run, scan, s) || !w.exists(r.TopK.Key) {
			t.Errorf("keyed, shard %d: TopK %+v, want its partial under the scan", s, r.TopK)
		}
	}
}

// A batch of a pass that names no scan (one started before range
// partials) writes each shard's own partial.
func TestCachedShardsWithoutScanWriteTheirOwn(t *testing.T) {
	w := newSearchWorld(t)
	const run, k = "unnamed", 3
	ref := w.cachedPool(run, 3, 10, 4, 8)
	var batch activities.CachedShardsResult
	w.must(w.acts.CachedShards, activities.CachedShardsInput{Run: run, Dataset: activities.Pool, First: 0, End: 3, Model: ref, K: k}, &batch)
	for s, r := range batch.Shards {
		if !r.Cached || r.TopK == nil || r.TopK.Key != activities.TopKKey(run, "", s) || !w.exists(r.TopK.Key) {
			t.Errorf("shard %d: %+v (TopK %+v), want its own partial", s, r, r.TopK)
		}
	}
	var res activities.MergeTopKResult
	w.must(w.acts.MergeTopK, activities.MergeTopKInput{Run: run, Shards: 3, Queries: 4, K: k}, &res)
	if got := w.readNeighbors(res.Key); len(got) != 4*k {
		t.Errorf("merged %d neighbours, want %d", len(got), 4*k)
	}
}
