package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"

	"dcd/internal/ahead"
	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/store"
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

func (r *GatherResult) add(images, rejects int) {
	r.Shards++
	r.Images += images - rejects
	r.Rejects += rejects
}

// GatherSelection reads poolAhead pool shards ahead of the debug-train
// shard it fills, and writes gatherWrites entries at once. Reading a
// pool shard's rows is four reads one after the other (its manifest, its
// rejects, the file's head, then its tail and rows), so from an object
// store its time is requests' latency, not bytes: a selection spread
// over thousands of shards, a few rows each, reads many at once. What
// each holds is its wanted rows.
const (
	poolAhead    = 32
	gatherWrites = 8
)

// GatherSelection fills the cache entries of a debug-train set's shards
// with rows of the model's cached features of the pool shards its images
// came from. When the target is the similarity model, the pool scan has
// cached them all, and a recurring pass reads no image for its
// selections: copying rows out of a pool shard's file costs a read, where
// embedding them again costs a read per image and the model's inference.
//
// It only ever saves work: a shard it cannot fill whole (a pool shard not
// cached with the model, or damaged) is left for EmbedShard, and when
// neither the first pool shard it needs nor the last is cached (the pool
// was embedded with another model) nothing is. Of each pool shard's file
// it reads the rows wanted (features.LoadRowsAt): a few KiB an image, by
// preads or, from an object store, in two rounds of requests a file.
//
// The shards are filled in order, the pool shards they draw on read
// poolAhead ahead and dropped after their last use: a selection written
// in pool order (as the selections are) holds a few pool shards' wanted
// rows at a time, however large.
func (a *Activities) GatherSelection(ctx context.Context, in GatherInput) (GatherResult, error) {
	// A selection of millions of rows is read whole, with the pool's
	// index, before the first shard's heartbeat.
	defer beating(ctx, func() []any { return nil })()
	var res GatherResult
	rows, err := a.readManifest(ctx, in.Manifest)
	if err != nil {
		return res, err
	}
	poolID := make(map[string]int64, len(rows))
	for _, r := range rows {
		poolID[r.key] = r.poolID
	}
	index, ok, err := a.readShardIndex(ctx, in.Run)
	if err != nil || !ok {
		return res, err
	}

	// Which shards to fill, and the pool ids of their images.
	type todo struct {
		shard int
		ids   []int64
	}
	var todos []todo
	need := map[int]map[int64]bool{} // pool shard → pool ids wanted
	var pools []int                  // pool shards in the order first needed
	firstUse, lastUse := map[int]int{}, map[int]int{}
	type listed struct {
		shard   *dataset.Shard
		cached  bool
		rejects int
	}
	shards := ahead.Read(ctx, in.Shards, shardsAhead, func(ctx context.Context, i int) (listed, error) {
		shard, err := a.readShard(ctx, ShardKey(in.Run, in.Dataset, i))
		if err != nil {
			return listed{}, err
		}
		rejects, ok, err := a.cachedRejects(ctx, features.Key(in.Model.Spec, shard.Digest()))
		return listed{shard, ok, len(rejects)}, err
	}, nil)
	defer shards.Stop()
	for i := range in.Shards {
		l, err := shards.Next()
		if err != nil {
			return res, err
		}
		heartbeat(ctx, i)
		shard := l.shard
		if l.cached {
			res.add(len(shard.Items), l.rejects)
			continue
		}
		ids := make([]int64, len(shard.Items))
		for j, it := range shard.Items {
			id, ok := poolID[it.Key]
			if !ok || id < 0 || index.shardOf(id) < 0 {
				ids = nil // an image with no pool id: embed the shard
				break
			}
			ids[j] = id
		}
		if ids == nil {
			continue
		}
		for _, id := range ids {
			p := index.shardOf(id)
			if need[p] == nil {
				need[p] = map[int64]bool{}
				firstUse[p] = len(todos)
				pools = append(pools, p)
			}
			need[p][id] = true
			lastUse[p] = len(todos)
		}
		todos = append(todos, todo{shard: i, ids: ids})
	}
	if len(todos) == 0 {
		return res, nil
	}

	first, err := a.pooledRows(ctx, in.Run, pools[0], in.Model, need[pools[0]])
	if err != nil {
		return res, err
	}
	var last *pooledRows // read already, when first is not
	if first == nil {
		// Not cached with the model: the pool was scanned with another
		// (nothing to gather), or this one entry is gone. The last pool
		// shard needed tells which, before every other is asked.
		if len(pools) == 1 {
			return res, nil
		}
		last, err = a.pooledRows(ctx, in.Run, pools[len(pools)-1], in.Model, need[pools[len(pools)-1]])
		if err != nil || last == nil {
			return res, err
		}
	}
	later := ahead.Read(ctx, len(pools)-1, poolAhead, func(ctx context.Context, j int) (*pooledRows, error) {
		if j+1 == len(pools)-1 && last != nil {
			return last, nil
		}
		return a.pooledRows(ctx, in.Run, pools[j+1], in.Model, need[pools[j+1]])
	}, nil)
	defer later.Stop()
	loaded := map[int]*pooledRows{pools[0]: first}
	next := 1
	writes, wctx := errgroup.WithContext(ctx)
	writes.SetLimit(gatherWrites)
	filled := make([]GatherResult, len(todos))
	for ti, t := range todos {
		if wctx.Err() != nil {
			break // a write failed: the pool shards left need no reading
		}
		for ; next < len(pools) && firstUse[pools[next]] <= ti; next++ {
			r, err := later.Next()
			if err != nil {
				writes.Wait()
				return res, err
			}
			loaded[pools[next]] = r
		}
		g := gather(t.ids, index, loaded)
		for p := range loaded {
			if lastUse[p] <= ti {
				delete(loaded, p)
			}
		}
		heartbeat(ctx, len(todos)+ti)
		if g == nil {
			continue
		}
		writes.Go(func() error {
			shard, err := a.readShard(wctx, ShardKey(in.Run, in.Dataset, t.shard))
			if err != nil {
				return err
			}
			filled[ti], _, err = a.writeGathered(wctx, shard, g, in.Model)
			return err
		})
	}
	if err := writes.Wait(); err != nil {
		return res, err
	}
	if err := ctx.Err(); err != nil {
		return res, err // cancelled before every shard was gathered
	}
	for _, f := range filled {
		res.Shards += f.Shards
		res.Images += f.Images
		res.Rejects += f.Rejects
	}
	return res, nil
}

// readShardIndex reads the run's pool ShardIndex; without one (a pass
// planned before pools had an index, or a damaged file) there is nothing
// to gather by.
func (a *Activities) readShardIndex(ctx context.Context, run string) (ShardIndex, bool, error) {
	var index ShardIndex
	key := ShardIndexKey(run, Pool)
	data, err := store.ReadAll(ctx, a.Bucket, key)
	switch {
	case gcerrors.Code(err) == gcerrors.NotFound:
		return index, false, nil
	case err != nil:
		return index, false, store.Classify(err, key)
	}
	if err := json.Unmarshal(data, &index); err != nil || !slices.IsSorted(index.FirstIDs) {
		warn(ctx, "pool shard index not used: selections are embedded", "key", key, "error", err)
		return index, false, nil
	}
	return index, true, nil
}

// pooledRows are the wanted rows of one pool shard's cached features.
type pooledRows struct {
	rows    map[int64]pooledRow // by pool id
	dims    []int
	rejects map[string]embed.Reject // by key
}

type pooledRow struct {
	key     string
	vectors [][]float32 // one per column
}

// pooledRows reads pool shard p's cached features and keeps the rows of
// the wanted pool ids; nil when the shard is not cached with m (nor, then,
// likely any other), and no rows when its entry cannot be used (damaged,
// or not of m's sizes): the debug-train shards that draw on it are left to
// EmbedShard, the others gathered.
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
	r := &pooledRows{rows: map[int64]pooledRow{}, rejects: map[string]embed.Reject{}}
	rejected, listed := map[string]int{}, map[string]int{}
	for _, rj := range rejects {
		r.rejects[rj.URI] = rj
		rejected[rj.URI]++
	}
	if len(rejects) == len(shard.Items) {
		return r, nil // no file: every image was rejected
	}
	for _, it := range shard.Items {
		listed[it.Key]++
	}
	for k, n := range rejected {
		if n < listed[k] {
			// A key listed twice, rejected once and embedded once (its
			// object appeared mid-scan): which copy has the row cannot
			// be told by key, so none of the shard's rows is taken.
			return &pooledRows{}, nil
		}
	}
	// The wanted images' keys, each with its pool ids in shard order (a
	// key listed twice is two images), and their rows: the file has a row
	// for each image of the shard not rejected, in order. A file whose
	// rows are not so gives rows of other keys, not gathered.
	ids := map[string][]int64{}
	var at []int
	next := 0 // the file's row of the next image not rejected
	for _, it := range shard.Items {
		if _, rejected := r.rejects[it.Key]; rejected {
			continue
		}
		if want[it.ID] {
			ids[it.Key] = append(ids[it.Key], it.ID)
			at = append(at, next)
		}
		next++
	}
	if len(at) == 0 {
		return r, nil // every image wanted was rejected
	}
	ms, err := features.LoadRowsAt(ctx, a.Bucket, key, m.Spec.Columns, at, a.Mem)
	for c := 0; err == nil && c < len(ms) && c < len(m.Dims); c++ {
		if ms[c].Dim != m.Dims[c] {
			err = fmt.Errorf("column %q has %d values a row, the model %d", m.Spec.Columns[c], ms[c].Dim, m.Dims[c])
		}
	}
	switch {
	case err != nil && (ctx.Err() != nil || store.Transient(err)):
		return nil, err // a retry may read it
	case err != nil:
		warn(ctx, "pool cache entry not gathered from", "key", key, "error", err)
		return &pooledRows{}, nil
	}
	for _, mat := range ms {
		r.dims = append(r.dims, mat.Dim)
	}
	for row, uri := range ms[0].URIs {
		if len(ids[uri]) == 0 {
			continue // a row of another image: a damaged entry
		}
		id := ids[uri][0]
		ids[uri] = ids[uri][1:]
		vs := make([][]float32, len(ms))
		for c, mat := range ms {
			vs[c] = mat.Row(row)
		}
		r.rows[id] = pooledRow{key: uri, vectors: vs}
	}
	return r, nil
}

// gathered is what one debug-train shard's entry is made of: for each of
// its images, by pool id, the pool shard that holds its row or its reject.
type gathered struct {
	ids   []int64
	pools []*pooledRows
}

// gather finds the pool shard of each image of a debug-train shard among
// those loaded; nil when one is missing (not cached).
func gather(ids []int64, index ShardIndex, loaded map[int]*pooledRows) *gathered {
	g := &gathered{ids: ids, pools: make([]*pooledRows, len(ids))}
	for j, id := range ids {
		if g.pools[j] = loaded[index.shardOf(id)]; g.pools[j] == nil {
			return nil
		}
	}
	return g
}

// writeGathered writes the cache entry of one debug-train shard as
// EmbedShard would have: its images' rows in the shard's order, and the
// pool's rejects of the others. It reports false, writing nothing, when an
// image's row is not the image's (by key) or it has neither row nor
// reject, and when none of its images could be read (EmbedShard leaves
// such a shard uncached, and fails naming one).
func (a *Activities) writeGathered(ctx context.Context, shard *dataset.Shard, g *gathered, m ModelRef) (GatherResult, bool, error) {
	var res GatherResult
	if len(shard.Items) != len(g.ids) {
		return res, false, nil
	}
	var b embed.Batch
	rejects := []embed.Reject{}
	for j, it := range shard.Items {
		pool := g.pools[j]
		if row, ok := pool.rows[g.ids[j]]; ok {
			if row.key != it.Key {
				return res, false, nil
			}
			if b.Vectors == nil {
				b.Vectors, b.Dims = make([][]float32, len(row.vectors)), pool.dims
			}
			for c, v := range row.vectors {
				b.Vectors[c] = append(b.Vectors[c], v...)
			}
			b.Images = append(b.Images, embed.Image{ID: it.ID, URI: it.Key, Label: it.Label, Domain: it.Domain})
			continue
		}
		rj, ok := pool.rejects[it.Key]
		if !ok {
			return res, false, nil
		}
		rejects = append(rejects, rj)
	}
	if len(b.Images) == 0 && !slices.ContainsFunc(rejects, func(r embed.Reject) bool { return !r.Unread() }) {
		return res, false, nil
	}
	key := features.Key(m.Spec, shard.Digest())
	if len(b.Images) > 0 {
		rec := features.Record(a.Mem, m.Spec.Columns, b, m.Spec.StoredAs)
		err := store.WriteArrow(ctx, a.Bucket, key, rec.Schema(), a.Mem, rec)
		rec.Release()
		if err != nil {
			return res, false, err
		}
	}
	rj, _ := json.Marshal(rejects)
	if err := store.WriteAll(ctx, a.Bucket, rejectsKey(key), rj); err != nil {
		return res, false, err
	}
	res.add(len(shard.Items), len(rejects))
	return res, true, nil
}
