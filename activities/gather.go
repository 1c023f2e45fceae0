package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"

	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"

	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/store"
	"dcd/schemas"
)

// GatherInput is a method's debug-train set, planned from its selection,
// whose target features may already be cached as rows of the pool's.
type GatherInput struct {
	Run      string
	Dataset  string // the method's debug-train set (MethodDataset)
	Shards   int    // its shards
	Manifest string // the selection it was planned from, with pool ids
	Model    ModelRef
}

// GatherResult counts the debug-train shards whose features are cached,
// found so or gathered now, and their images.
type GatherResult struct {
	Shards  int
	Images  int
	Rejects int
}

// gatherReads is how many pool shards' features GatherSelection reads at
// once.
const gatherReads = 8

// GatherSelection fills the cache entries of a debug-train set's shards
// with rows of the model's cached features of the pool shards its images
// came from. When the target is the similarity model, the pool scan has
// cached them all, and a recurring pass reads no image for its
// selections: copying rows out of a pool shard's file costs a read, where
// embedding them again costs a read per image and the model's inference.
// A shard that cannot be gathered whole is left for EmbedShard; when the
// first pool shard asked for is not cached (the pool was embedded with
// another model), nothing is.
//
// Every pool shard an image comes from is read whole, so a selection
// spread thin over a huge pool (a few images a shard) would read far more
// than embedding its images: such a selection is embedded instead, when
// the rows to read outweigh imageWorth bytes an image.
func (a *Activities) GatherSelection(ctx context.Context, in GatherInput) (GatherResult, error) {
	var res GatherResult
	rows, err := a.readManifest(ctx, in.Manifest)
	if err != nil {
		return res, err
	}
	poolID := make(map[string]int64, len(rows))
	for _, r := range rows {
		poolID[r.key] = r.poolID
	}
	var index ShardIndex
	data, err := store.ReadAll(ctx, a.Bucket, ShardIndexKey(in.Run, Pool))
	if gcerrors.Code(err) == gcerrors.NotFound {
		return res, nil // planned before pools had an index
	}
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(data, &index); err != nil {
		return res, fmt.Errorf("activities: %s: %w", ShardIndexKey(in.Run, Pool), err)
	}

	// Each shard still to fill, and the pool shard of each of its images.
	type todo struct {
		shard *dataset.Shard
		key   string
		ids   []int64 // each image's pool id
	}
	var todos []todo
	need := map[int]map[int64]bool{} // pool shard → pool ids wanted
	for i := range in.Shards {
		shardKey := ShardKey(in.Run, in.Dataset, i)
		shard, err := a.readShard(ctx, shardKey)
		if err != nil {
			return res, err
		}
		key := features.Key(in.Model.Spec, shard.Digest())
		if rejects, ok, err := a.cachedRejects(ctx, key); err != nil {
			return res, err
		} else if ok {
			res.add(len(shard.Items), len(rejects))
			continue
		}
		t := todo{shard: shard, key: key, ids: make([]int64, len(shard.Items))}
		for j, it := range shard.Items {
			id, ok := poolID[it.Key]
			if !ok || id < 0 || index.shardOf(id) < 0 {
				t.ids = nil // an image with no pool id: embed the shard
				break
			}
			t.ids[j] = id
		}
		if t.ids == nil {
			continue
		}
		todos = append(todos, t)
		for _, id := range t.ids {
			p := index.shardOf(id)
			if need[p] == nil {
				need[p] = map[int64]bool{}
			}
			need[p][id] = true
		}
	}
	if len(todos) == 0 || !worthReading(index, need, in.Model) {
		return res, nil
	}

	// Read each pool shard wanted, keeping only its wanted rows. One is
	// read alone first: a pool cached with another model is told at the
	// cost of one missing file.
	pools := slices.Sorted(maps.Keys(need))
	found := make(map[int]*pooledRows, len(pools))
	var mu sync.Mutex
	read := func(ctx context.Context, p int) error {
		r, err := a.pooledRows(ctx, in.Run, p, in.Model, need[p])
		if err != nil {
			return err
		}
		mu.Lock()
		found[p] = r
		mu.Unlock()
		heartbeat(ctx, len(found))
		return nil
	}
	if err := read(ctx, pools[0]); err != nil {
		return res, err
	}
	if found[pools[0]] == nil {
		return res, nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(gatherReads)
	for _, p := range pools[1:] {
		g.Go(func() error { return read(gctx, p) })
	}
	if err := g.Wait(); err != nil {
		return res, err
	}

	for _, t := range todos {
		n, rejects, ok, err := a.writeGathered(ctx, t.shard, t.key, t.ids, index, found, in.Model)
		if err != nil {
			return res, err
		}
		if ok {
			res.add(n, rejects)
		}
	}
	return res, nil
}

// imageWorth is how many bytes of feature files embedding one image is
// taken to be worth reading instead: reading the image itself (tens to
// hundreds of KB for a photo), decoding it and running the model on it.
const imageWorth = 256 << 10

// worthReading says whether reading the pool shards wanted whole costs
// less than embedding the images wanted from them: at 384 float32 values
// an image and 2,000 images a shard, when the selection takes a dozen
// images or more from each shard on average.
func worthReading(index ShardIndex, need map[int]map[int64]bool, m ModelRef) bool {
	n := len(index.FirstIDs)
	if n < 2 || len(m.Dims) == 0 {
		return true // a single shard, or no sizes to go by
	}
	rowBytes := 0
	for _, d := range m.Dims {
		rowBytes += 4 * d
	}
	if m.Spec.StoredAs == schemas.Float16 {
		rowBytes /= 2
	}
	meanRows := float64(index.FirstIDs[n-1]-index.FirstIDs[0]) / float64(n-1)
	wanted := 0
	for _, ids := range need {
		wanted += len(ids)
	}
	return float64(len(need))*meanRows*float64(rowBytes) <= float64(wanted)*imageWorth
}

func (r *GatherResult) add(images, rejects int) {
	r.Shards++
	r.Images += images - rejects
	r.Rejects += rejects
}

// pooledRows are the wanted rows of one pool shard's cached features.
type pooledRows struct {
	vectors map[int64][][]float32 // pool id → one vector per column
	dims    []int
	rejects map[string]embed.Reject // by key
}

// pooledRows reads pool shard p's cached features and keeps the rows of
// the wanted pool ids; nil when the shard is not cached with m.
func (a *Activities) pooledRows(ctx context.Context, run string, p int, m ModelRef, want map[int64]bool) (*pooledRows, error) {
	shardKey := ShardKey(run, Pool, p)
	shard, err := a.readShard(ctx, shardKey)
	if err != nil {
		return nil, err
	}
	key := features.Key(m.Spec, shard.Digest())
	rejects, ok, err := a.cachedRejects(ctx, key)
	if err != nil || !ok {
		return nil, err
	}
	r := &pooledRows{vectors: map[int64][][]float32{}, rejects: map[string]embed.Reject{}}
	for _, rj := range rejects {
		r.rejects[rj.URI] = rj
	}
	if len(rejects) == len(shard.Items) {
		return r, nil // no file: every image was rejected
	}
	ms, err := features.LoadColumns(ctx, a.Bucket, key, m.Spec.Columns, a.Mem)
	if err != nil {
		return nil, err
	}
	items, err := features.Join(shardKey, shard, ms[0])
	if err != nil {
		return nil, err
	}
	for _, mat := range ms {
		r.dims = append(r.dims, mat.Dim)
	}
	for row, it := range items {
		if !want[it.ID] {
			continue
		}
		vs := make([][]float32, len(ms))
		for c, mat := range ms {
			vs[c] = slices.Clone(mat.Data[row*mat.Dim : (row+1)*mat.Dim])
		}
		r.vectors[it.ID] = vs
	}
	return r, nil
}

// writeGathered writes the cache entry of one debug-train shard from the
// pool rows found, as EmbedShard would have: the images in the shard's
// order, the pool's rejects for those it rejected. It reports the shard's
// images and rejects, and false when some image's row is missing.
func (a *Activities) writeGathered(ctx context.Context, shard *dataset.Shard, key string, ids []int64, index ShardIndex, found map[int]*pooledRows, m ModelRef) (int, int, bool, error) {
	var b embed.Batch
	rejects := []embed.Reject{}
	for j, it := range shard.Items {
		pool := found[index.shardOf(ids[j])]
		if pool == nil {
			return 0, 0, false, nil
		}
		if rj, ok := pool.rejects[it.Key]; ok {
			rejects = append(rejects, rj)
			continue
		}
		vs, ok := pool.vectors[ids[j]]
		if !ok {
			return 0, 0, false, nil
		}
		if b.Vectors == nil {
			b.Vectors, b.Dims = make([][]float32, len(vs)), pool.dims
		}
		for c, v := range vs {
			b.Vectors[c] = append(b.Vectors[c], v...)
		}
		b.Images = append(b.Images, embed.Image{ID: it.ID, URI: it.Key, Label: it.Label, Domain: it.Domain})
	}
	if len(b.Images) > 0 {
		rec := features.Record(a.Mem, m.Spec.Columns, b, m.Spec.StoredAs)
		err := store.WriteArrow(ctx, a.Bucket, key, rec.Schema(), a.Mem, rec)
		rec.Release()
		if err != nil {
			return 0, 0, false, err
		}
	}
	rj, _ := json.Marshal(rejects)
	if err := store.WriteAll(ctx, a.Bucket, rejectsKey(key), rj); err != nil {
		return 0, 0, false, err
	}
	return len(shard.Items), len(rejects), true, nil
}
