package activities_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/apache/arrow/go/v15/arrow/array"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
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
				if s == 3 && j == 0 {
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
			}
			all[q] = append(all[q], list...)
		}
		rec := rb.NewRecord()
		if err := store.WriteArrow(ctx, w.b, activities.TopKKey(run, s), schemas.Neighbors, w.mem, rec); err != nil {
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
	rec := features.Record(w.mem, []string{"features"}, embed.Batch{Images: images, Vectors: [][]float32{vecs(rows)}, Dims: []int{dim}}, "")
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
