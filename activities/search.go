package activities

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"go.temporal.io/sdk/activity"

	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/knn"
	"dcd/internal/store"
	"dcd/schemas"
)

// loadShard reads one column of a shard's features with the shard's items,
// row for row. A shard whose every image was rejected has no rows.
func (a *Activities) loadShard(ctx context.Context, run, ds string, i int, m ModelRef, column string) ([]dataset.Item, *features.Matrix, error) {
	shardKey := ShardKey(run, ds, i)
	shard, err := a.readShard(ctx, shardKey)
	if err != nil {
		return nil, nil, err
	}
	key := features.Key(m.Spec, shard.Digest())
	ok, err := store.Exists(ctx, a.Bucket, key)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		if _, done, err := a.cachedRejects(ctx, key); err != nil || !done {
			return nil, nil, fmt.Errorf("activities: features of %s are missing (%s): embed the shard first", shardKey, key)
		}
		return nil, &features.Matrix{}, nil
	}
	mat, err := features.Load(ctx, a.Bucket, key, column, a.Mem)
	if err != nil {
		return nil, nil, err
	}
	items, err := features.Join(shardKey, shard, mat)
	return items, mat, err
}

// QueriesInput names the embedded E_sample shards.
type QueriesInput struct {
	Run    string
	Shards int
	Model  ModelRef
}

// QueriesResult counts the queries.
type QueriesResult struct {
	Key     string
	Queries int
}

// Queries gathers the E_sample features into runs/<id>/queries.arrow, one
// row per query in shard order.
func (a *Activities) Queries(ctx context.Context, in QueriesInput) (QueriesResult, error) {
	res := QueriesResult{Key: RunKey(in.Run, "queries.arrow")}
	var all features.Matrix
	for i := 0; i < in.Shards; i++ {
		items, m, err := a.loadShard(ctx, in.Run, ErrorSample, i, in.Model, "features")
		if err != nil {
			return res, err
		}
		all.Dim = max(all.Dim, m.Dim)
		all.URIs = append(all.URIs, m.URIs...)
		all.Data = append(all.Data, m.Data...)
		res.Queries += len(items)
	}
	if res.Queries == 0 {
		return res, invalid("data.error_sample: no image could be embedded, so there is nothing to search for")
	}
	images := make([]embed.Image, len(all.URIs))
	for i, u := range all.URIs {
		images[i] = embed.Image{URI: u}
	}
	rec := features.Record(a.Mem, []string{"features"}, embed.Batch{Images: images, Vectors: [][]float32{all.Data}, Dims: []int{all.Dim}})
	defer rec.Release()
	return res, store.WriteArrow(ctx, a.Bucket, res.Key, rec.Schema(), a.Mem, rec)
}

// TopKShardInput is one pool shard to search.
type TopKShardInput struct {
	Run   string
	Shard int
	Model ModelRef
	K     int
}

// TopKShardResult says where the partial result is.
type TopKShardResult struct {
	Key  string
	Rows int
}

// TopKShard finds each query's K nearest images in one pool shard.
func (a *Activities) TopKShard(ctx context.Context, in TopKShardInput) (TopKShardResult, error) {
	res := TopKShardResult{Key: TopKKey(in.Run, in.Shard)}
	queries, err := features.Load(ctx, a.Bucket, RunKey(in.Run, "queries.arrow"), "features", a.Mem)
	if err != nil {
		return res, store.Classify(err, RunKey(in.Run, "queries.arrow"))
	}
	items, pool, err := a.loadShard(ctx, in.Run, Pool, in.Shard, in.Model, "features")
	if err != nil {
		return res, err
	}
	b := newNeighborBuilder(a)
	defer b.release()
	if len(items) > 0 {
		if pool.Dim != queries.Dim {
			return res, invalid("similarity model gives %d-dim features for pool shard %d but %d-dim for E_sample", pool.Dim, in.Shard, queries.Dim)
		}
		s, err := a.knn()
		if err != nil {
			return res, err
		}
		ids := make([]int64, len(items))
		for i, it := range items {
			ids[i] = it.ID
		}
		nearest, err := s.TopK(queries.Data, len(queries.URIs), pool.Data, ids, pool.Dim, in.K)
		if err != nil {
			return res, err
		}
		for q, list := range nearest {
			for r, n := range list {
				b.add(int32(q), int32(r), n.Distance, items[n.Index])
			}
		}
	}
	res.Rows = b.rows
	rec := b.record()
	defer rec.Release()
	return res, store.WriteArrow(ctx, a.Bucket, res.Key, schemas.Neighbors, a.Mem, rec)
}

// MergeTopKInput names the partial results to merge.
type MergeTopKInput struct {
	Run     string
	Shards  int
	Queries int
	K       int
}

// MergeTopKResult says where the merged neighbours are.
type MergeTopKResult struct {
	Key  string
	Rows int
}

type candidate struct {
	knn.Neighbor
	item dataset.Item
}

// MergeTopK merges the per-shard partial top-k into each query's global K
// nearest, ties broken by pool id. It streams: memory is Queries×K×2
// candidates whatever the number of shards.
func (a *Activities) MergeTopK(ctx context.Context, in MergeTopKInput) (MergeTopKResult, error) {
	res := MergeTopKResult{Key: RunKey(in.Run, "neighbors.arrow")}
	best := make([][]candidate, in.Queries)
	for i := 0; i < in.Shards; i++ {
		key := TopKKey(in.Run, i)
		f, err := store.OpenArrow(ctx, a.Bucket, key, a.Mem)
		if err != nil {
			return res, store.Classify(err, key)
		}
		for r := 0; r < f.NumRecords(); r++ {
			rec, err := f.Record(r)
			if err != nil {
				f.Close()
				return res, fmt.Errorf("activities: %s: %w", key, err)
			}
			forEachNeighbor(rec, func(q int32, c candidate) {
				best[q] = append(best[q], c)
			})
		}
		f.Close()
		for q := range best {
			best[q] = topK(best[q], in.K)
		}
		if i%100 == 0 {
			activity.RecordHeartbeat(ctx, i)
		}
	}
	b := newNeighborBuilder(a)
	defer b.release()
	for q, list := range best {
		for r, c := range list {
			b.add(int32(q), int32(r), c.Distance, c.item)
		}
	}
	res.Rows = b.rows
	rec := b.record()
	defer rec.Release()
	return res, store.WriteArrow(ctx, a.Bucket, res.Key, schemas.Neighbors, a.Mem, rec)
}

func topK(cs []candidate, k int) []candidate {
	slices.SortFunc(cs, func(x, y candidate) int {
		if knn.Less(x.Neighbor, y.Neighbor) {
			return -1
		}
		if knn.Less(y.Neighbor, x.Neighbor) {
			return 1
		}
		return 0
	})
	cs = slices.CompactFunc(cs, func(x, y candidate) bool { return x.ID == y.ID })
	return cs[:min(k, len(cs))]
}

// SelectInput configures building the debug-train set.
type SelectInput struct {
	Run         string
	ErrorDomain string
}

// SelectResult describes the debug-train set.
type SelectResult struct {
	Manifest string
	Size     int
	// Precision is the share of selected images from ErrorDomain; nil when
	// the pool carries no ground truth.
	Precision *float64
}

// SelectDebugTrain turns the merged neighbours into the debug-train set:
// each selected pool image once, with its weak label, in pool-id order.
func (a *Activities) SelectDebugTrain(ctx context.Context, in SelectInput) (SelectResult, error) {
	res := SelectResult{Manifest: RunKey(in.Run, "debug_train.csv")}
	key := RunKey(in.Run, "neighbors.arrow")
	f, err := store.OpenArrow(ctx, a.Bucket, key, a.Mem)
	if err != nil {
		return res, store.Classify(err, key)
	}
	defer f.Close()
	chosen := map[int64]dataset.Item{}
	for r := 0; r < f.NumRecords(); r++ {
		rec, err := f.Record(r)
		if err != nil {
			return res, fmt.Errorf("activities: %s: %w", key, err)
		}
		forEachNeighbor(rec, func(_ int32, c candidate) { chosen[c.ID] = c.item })
	}
	ids := make([]int64, 0, len(chosen))
	for id := range chosen {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var sb strings.Builder
	sb.WriteString("uri,label,domain\n")
	hits, known := 0, false
	for _, id := range ids {
		it := chosen[id]
		fmt.Fprintf(&sb, "%s,%s,%s\n", csvField("/"+it.Key), csvField(it.Label), csvField(it.Domain))
		if it.Domain != "" {
			known = true
		}
		if it.Domain == in.ErrorDomain {
			hits++
		}
	}
	res.Size = len(ids)
	if in.ErrorDomain != "" && known && res.Size > 0 {
		p := float64(hits) / float64(res.Size)
		res.Precision = &p
	}
	return res, store.WriteAll(ctx, a.Bucket, res.Manifest, []byte(sb.String()))
}

func csvField(s string) string {
	if strings.ContainsAny(s, ",\"\n") {
		return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
	}
	return s
}

// neighborBuilder accumulates rows of the Neighbors schema.
type neighborBuilder struct {
	rb   *array.RecordBuilder
	rows int
}

func newNeighborBuilder(a *Activities) *neighborBuilder {
	return &neighborBuilder{rb: array.NewRecordBuilder(a.Mem, schemas.Neighbors)}
}

func (b *neighborBuilder) add(q, rank int32, dist float32, it dataset.Item) {
	b.rb.Field(0).(*array.Int32Builder).Append(q)
	b.rb.Field(1).(*array.Int32Builder).Append(rank)
	b.rb.Field(2).(*array.Float32Builder).Append(dist)
	b.rb.Field(3).(*array.Int64Builder).Append(it.ID)
	b.rb.Field(4).(*array.StringBuilder).Append(it.Key)
	b.rb.Field(5).(*array.StringBuilder).Append(it.Label)
	b.rb.Field(6).(*array.StringBuilder).Append(it.Domain)
	b.rows++
}

// record returns the rows as one record; the caller must Release it.
func (b *neighborBuilder) record() arrow.Record { return b.rb.NewRecord() }

func (b *neighborBuilder) release() { b.rb.Release() }

func forEachNeighbor(rec arrow.Record, fn func(q int32, c candidate)) {
	q := rec.Column(0).(*array.Int32)
	dist := rec.Column(2).(*array.Float32)
	id := rec.Column(3).(*array.Int64)
	uri := rec.Column(4).(*array.String)
	label := rec.Column(5).(*array.String)
	domain := rec.Column(6).(*array.String)
	for i := 0; i < int(rec.NumRows()); i++ {
		fn(q.Value(i), candidate{
			Neighbor: knn.Neighbor{ID: id.Value(i), Distance: dist.Value(i)},
			item:     dataset.Item{ID: id.Value(i), Key: uri.Value(i), Label: label.Value(i), Domain: domain.Value(i)},
		})
	}
}
