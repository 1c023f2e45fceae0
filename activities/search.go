package activities

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"dcd/internal/ahead"
	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/knn"
	"dcd/internal/redact"
	"dcd/internal/store"
	"dcd/schemas"
)

// loadShard reads one column of a shard's features with the shard's items,
// row for row. A shard whose every image was rejected has no rows.
func (a *Activities) loadShard(ctx context.Context, run, ds string, i int, m ModelRef, column string) (loadedShard, error) {
	shardKey := ShardKey(run, ds, i)
	shard, err := a.readShard(ctx, shardKey)
	if err != nil {
		return loadedShard{}, err
	}
	items, mat, err := a.shardFeatures(ctx, shardKey, shard, m, column)
	if errors.Is(err, errEntryDropped) {
		// Only a lookup embeds the shard again: the pass's own
		// (EmbedShard's, CachedShards') retry does; this activity's
		// would fail as this, ten times.
		return loadedShard{}, invalid("%v: run the pass again", err)
	}
	return loadedShard{features.Key(m.Spec, shard.Digest()), items, mat}, err
}

// errEntryDropped marks a cache entry dropped for damage: the shard's
// next lookup finds it uncached, and embeds it again.
var errEntryDropped = errors.New("the entry is dropped, for the shard to be embedded again")

// eachShard calls fn with shards 0 to n-1 of a dataset, in order, each
// with one column of its features, featuresAhead of them read ahead.
func (a *Activities) eachShard(ctx context.Context, run, ds string, n int, m ModelRef, column string, fn func(i int, s loadedShard) error) error {
	return a.eachShardOf(ctx, run, []shardSet{{ds, n}}, m, column, func(_, i int, s loadedShard) error { return fn(i, s) })
}

// shardSet is the first n shards of a dataset of the run.
type shardSet struct {
	ds string
	n  int
}

// eachShardOf is eachShard over several sets, one after the other, their
// shards read ahead across the sets' ends: from a store that answers in
// 50 ms, a set read after another's last shard waited a round of reads
// before its first.
func (a *Activities) eachShardOf(ctx context.Context, run string, sets []shardSet, m ModelRef, column string, fn func(set, i int, s loadedShard) error) error {
	r := a.readSets(ctx, run, sets, m, column)
	defer r.stop()
	return r.each(fn)
}

// setReads are sets' shards being read, featuresAhead ahead, for each to
// take in order; readSets starts them before they are wanted.
type setReads struct {
	refs   []shardRef
	shards *ahead.Reader[loadedShard]
}

// shardRef is shard i of sets[set].
type shardRef struct{ set, i int }

// shardRefs lists the shards of sets in order, set by set.
func shardRefs(sets []shardSet) []shardRef {
	var refs []shardRef
	for si, s := range sets {
		for i := range s.n {
			refs = append(refs, shardRef{si, i})
		}
	}
	return refs
}

func (a *Activities) readSets(ctx context.Context, run string, sets []shardSet, m ModelRef, column string) *setReads {
	refs := shardRefs(sets)
	return &setReads{refs: refs, shards: ahead.Read(ctx, len(refs), featuresAhead, func(ctx context.Context, k int) (loadedShard, error) {
		return a.loadShard(ctx, run, sets[refs[k].set].ds, refs[k].i, m, column)
	}, nil)}
}

// each calls fn with every shard, in order; call it once.
func (r *setReads) each(fn func(set, i int, s loadedShard) error) error {
	for _, ref := range r.refs {
		s, err := r.shards.Next()
		if err == nil {
			err = fn(ref.set, ref.i, s)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// stop ends the reads not yet taken.
func (r *setReads) stop() { r.shards.Stop() }

// loadedShard is a shard's rows: its items and their features, read
// from the feature file at key.
type loadedShard struct {
	key   string
	items []dataset.Item
	mat   *features.Matrix
}

// shardFeatures is loadShard for a shard manifest already read. It reads
// the feature file without asking first whether it exists (one storage
// round trip fewer): only when it is missing are the rejects consulted.
func (a *Activities) shardFeatures(ctx context.Context, shardKey string, shard *dataset.Shard, m ModelRef, column string) ([]dataset.Item, *features.Matrix, error) {
	key := features.Key(m.Spec, shard.Digest())
	mat, err := features.Load(ctx, a.Bucket, key, column, a.Mem)
	if gcerrors.Code(err) == gcerrors.NotFound {
		// No file and every image rejected: the shard has no rows. With
		// fewer rejects the file is being written (features before
		// rejects) or was removed.
		rejects, done, err := a.cachedRejects(ctx, key)
		if err != nil || !done {
			return nil, nil, fmt.Errorf("activities: features of %s are missing (%s): embed the shard first", shardKey, key)
		}
		if len(rejects) < len(shard.Items) {
			// The entry was completed since the file was read (features
			// first, then rejects), or its file is gone (removed by
			// hand, or by a bucket's expiry rule). Gone, the entry goes
			// too, for the retry to find the shard uncached and embed it
			// again rather than fail as this forever.
			if there, err := a.Bucket.Exists(ctx, key); err == nil && !there {
				if err := a.Bucket.Delete(ctx, rejectsKey(key)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
					return nil, nil, err
				}
				return nil, nil, fmt.Errorf("activities: the features of %s are gone from the cache (%s): %w", shardKey, key, errEntryDropped)
			}
			return nil, nil, fmt.Errorf("activities: features of %s are missing (%s): embed the shard first", shardKey, key)
		}
		return nil, &features.Matrix{}, nil
	}
	if errors.Is(err, store.ErrDamaged) {
		// Read again, the file would fail again, every retry and every
		// pass: the entry goes, for the retry to embed the shard.
		if err := a.Bucket.Delete(ctx, rejectsKey(key)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("activities: the cached features of %s are damaged (%v): %w", shardKey, err, errEntryDropped)
	}
	if err != nil {
		return nil, nil, err
	}
	if err := m.checkColumnDim(shardKey, column, mat.Dim); err != nil {
		return nil, nil, err
	}
	items, err := features.Join(shardKey, shard, mat)
	if err != nil {
		return nil, nil, fmt.Errorf("%w; remove the cache entry %s and %s to embed the shard again", err, key, rejectsKey(key))
	}
	return items, mat, nil
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
	// The check beside the features' reads: from a remote store, a round
	// of requests each, on the pass's critical path. Its error, naming
	// the images, comes first.
	checked := make(chan error, 1)
	go func() { checked <- a.checkErrorSample(ctx, in.Run, in.Shards, in.Model) }()
	var all features.Matrix
	err := a.eachShard(ctx, in.Run, ErrorSample, in.Shards, in.Model, "features", func(_ int, s loadedShard) error {
		all.Dim = max(all.Dim, s.mat.Dim)
		all.URIs = append(all.URIs, s.mat.URIs...)
		all.Data = append(all.Data, s.mat.Data...)
		res.Queries += len(s.items)
		return nil
	})
	if err := <-checked; err != nil {
		return res, err
	}
	if err != nil {
		return res, err
	}
	if res.Queries == 0 {
		return res, invalid("data.error_sample: no image could be embedded, so there is nothing to search for")
	}
	images := make([]embed.Image, len(all.URIs))
	for i, u := range all.URIs {
		images[i] = embed.Image{URI: u}
	}
	rec := features.Record(a.Mem, []string{"features"}, embed.Batch{Images: images, Vectors: [][]float32{all.Data}, Dims: []int{all.Dim}}, "")
	defer rec.Release()
	return res, store.WriteArrow(ctx, a.Bucket, res.Key, rec.Schema(), a.Mem, rec)
}

// TopKShardInput is one pool shard to search.
type TopKShardInput struct {
	Run   string
	Shard int
	Model ModelRef
	K     int
	// Scan names the scan the partial is of (TopKKey); empty: none.
	Scan string `json:",omitempty"`
}

// TopKShardResult says where the partial result is.
type TopKShardResult struct {
	Key  string
	Rows int
	// Search is the time spent in the k-NN scan (waits for other shards'
	// products included), and Took the whole search's from Started (the
	// worker's clock), storage reads and writes included: `starter bench`
	// reports the split.
	Search, Took time.Duration
	Started      time.Time
}

// TopKShard finds each query's K nearest images in one pool shard.
func (a *Activities) TopKShard(ctx context.Context, in TopKShardInput) (TopKShardResult, error) {
	defer beating(ctx, func() []any { return nil })() // it may wait on the worker's search memory
	shardKey := ShardKey(in.Run, Pool, in.Shard)
	shard, err := a.readShard(ctx, shardKey)
	if err != nil {
		return TopKShardResult{}, err
	}
	return a.topKShard(ctx, in, shard)
}

// topKShard is TopKShard for a shard manifest already read.
func (a *Activities) topKShard(ctx context.Context, in TopKShardInput, shard *dataset.Shard) (TopKShardResult, error) {
	return a.search(ctx, in, a.readSearch(ctx, in, shard), nil)
}

// searchReads are what a pool shard's search reads: the run's queries and
// the shard's features with its items. readSearch starts both reads at
// once, in the background, so that from an object store they cost one
// request's latency, not two, and a caller can wait for something else
// meanwhile (EmbedShard, the cache's rejects).
type searchReads struct {
	done    chan struct{}
	cancel  context.CancelFunc
	started time.Time
	queries *features.Matrix
	items   []dataset.Item
	pool    *features.Matrix
	err     error
	release func() // gives back the features' bytes (Sessions.hold)
}

func (a *Activities) readSearch(ctx context.Context, in TopKShardInput, shard *dataset.Shard) *searchReads {
	ctx, cancel := context.WithCancel(ctx)
	r := &searchReads{done: make(chan struct{}), cancel: cancel, started: time.Now(), release: func() {}}
	go func() {
		defer close(r.done)
		defer func() {
			// Temporal recovers an activity's own panics, not this
			// goroutine's: a damaged file must fail the search, not the
			// worker.
			if p := recover(); p != nil {
				r.err = fmt.Errorf("activities: search of %s: %v", ShardKey(in.Run, Pool, in.Shard), p)
			}
		}()
		dim := 1024 // a guess, for a model whose output size the pass did not measure
		if o := slices.Index(in.Model.Spec.Columns, "features"); o >= 0 && o < len(in.Model.Dims) && in.Model.Dims[o] > 0 {
			dim = in.Model.Dims[o]
		}
		release, err := a.Sessions.hold(ctx, int64(len(shard.Items))*int64(dim)*4)
		if err != nil {
			r.err = err
			return
		}
		r.release = release
		queriesKey := RunKey(in.Run, "queries.arrow")
		var g errgroup.Group
		g.Go(func() (err error) {
			if r.queries, err = a.queries(ctx, queriesKey); err != nil {
				err = store.Classify(err, queriesKey)
			}
			return err
		})
		g.Go(func() (err error) {
			r.items, r.pool, err = a.shardFeatures(ctx, ShardKey(in.Run, Pool, in.Shard), shard, in.Model, "features")
			return err
		})
		r.err = g.Wait()
	}()
	return r
}

// drop waits for the reads to end and gives their bytes back; search
// drops them itself.
func (r *searchReads) drop() {
	<-r.done
	r.cancel()
	r.release()
}

// match waits for the reads and reports whether they found the rows of
// images images, as a cache entry with that many does.
func (r *searchReads) match(images int) bool {
	<-r.done
	return r.err == nil && len(r.items) == images
}

// disagree waits for the reads and reports whether the rows they found
// and rejects do not split the shard's images between them, each image
// in one: a feature file and rejects of two writers' entries.
func (r *searchReads) disagree(shard *dataset.Shard, rejects []embed.Reject) bool {
	<-r.done
	if r.err != nil {
		return false // (the search fails with it)
	}
	if len(r.items)+len(rejects) != len(shard.Items) {
		return true
	}
	left := make(map[string]int, len(rejects)) // a pool may list an image twice
	for _, rj := range rejects {
		left[rj.URI]++
	}
	row := 0 // r.items are the shard's, in its order (features.Join)
	for _, it := range shard.Items {
		if row < len(r.items) && r.items[row].Key == it.Key {
			row++
			continue
		}
		if left[it.Key] == 0 { // neither a row nor a reject
			return true
		}
		left[it.Key]--
	}
	return false
}

// abandon is drop for reads whose result is not wanted: it cancels them
// first.
func (r *searchReads) abandon() {
	r.cancel()
	r.drop()
}

// search finds each query's K nearest images among the shard's rows that
// r reads, and writes them at TopKKey, or hands them to into when it takes
// them (CachedShards).
func (a *Activities) search(ctx context.Context, in TopKShardInput, r *searchReads, into *rangePartial) (res TopKShardResult, err error) {
	var took time.Duration // the search's own, before it waits on into
	defer func() {
		res.Started, res.Took = r.started, cmp.Or(took, time.Since(r.started))
	}() // (EmbedShard adds its lookup's time before the reads)
	defer r.drop()
	<-r.done
	res = TopKShardResult{Key: TopKKey(in.Run, in.Scan, in.Shard)}
	if r.err != nil {
		return res, r.err
	}
	if err := ctx.Err(); err != nil {
		// A batch whose other shard failed, or a pass cancelled: not a
		// scan to queue for (a scan takes no context once it runs).
		return res, err
	}
	queries, items, pool := r.queries, r.items, r.pool
	var nearest [][]knn.Neighbor
	if len(items) > 0 {
		if pool.Dim != queries.Dim {
			return res, invalid("similarity model %s gives %d-dim features for pool shard %s but %d-dim for E_sample", in.Model.Path, pool.Dim, ShardKey(in.Run, Pool, in.Shard), queries.Dim)
		}
		s, err := a.knn()
		if err != nil {
			return res, err
		}
		ids := make([]int64, len(items))
		for i, it := range items {
			ids[i] = it.ID
		}
		searched := time.Now()
		nearest, err = s.TopK(queries.Data, len(queries.URIs), pool.Data, ids, pool.Dim, in.K)
		if err != nil {
			return res, err
		}
		res.Search = time.Since(searched)
	}
	r.pool = nil // what is left of the rows goes into b, or into
	r.release()
	if into != nil {
		took = time.Since(r.started)
		into.settle(in.Shard, true)
		all, err := into.wait(ctx)
		if err != nil {
			return res, err
		}
		if all {
			res.Key, res.Rows = into.key, into.fold(nearest, items)
			return res, nil
		}
	}
	b := newNeighborBuilder(a)
	defer b.release()
	if len(nearest) > 0 {
		b.reserve(len(nearest)*min(in.K, len(items)), items[0])
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

// queriesCache holds the queries of the runs searched last: every pool
// shard of a run searches the same ones, so a worker reads them once per
// run instead of once per shard. An entry is used only while the object's
// attributes (ETag, size, time) are unchanged.
var queriesCache struct {
	sync.Mutex
	entries []queriesEntry // most recent first
	loads   singleflight.Group
}

type queriesEntry struct {
	bucket  *blob.Bucket
	key     string
	version string
	m       *features.Matrix
}

// queries returns the features at key, from queriesCache when it holds
// them. The matrix is shared: callers must not modify it.
func (a *Activities) queries(ctx context.Context, key string) (*features.Matrix, error) {
	attrs, err := a.Bucket.Attributes(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("activities: %q: %w", key, err)
	}
	version := fmt.Sprintf("%s/%d/%d", attrs.ETag, attrs.Size, attrs.ModTime.UnixNano())
	c := &queriesCache
	c.Lock()
	for _, e := range c.entries {
		if e.bucket == a.Bucket && e.key == key && e.version == version {
			c.Unlock()
			return e.m, nil
		}
	}
	c.Unlock()
	// The first searches of a run start together: one reads the queries,
	// the others wait for it.
	return sharedLoad(ctx, &c.loads, fmt.Sprintf("%p %s %s", a.Bucket, key, version), func(ctx context.Context) (*features.Matrix, error) {
		m, err := features.Load(ctx, a.Bucket, key, "features", a.Mem)
		if err != nil {
			return nil, err
		}
		c.Lock()
		defer c.Unlock()
		c.entries = append([]queriesEntry{{a.Bucket, key, version, m}}, c.entries[:min(len(c.entries), 1)]...)
		return m, nil
	})
}

// MergeTopKInput names the partial results to merge.
type MergeTopKInput struct {
	Run     string
	Shards  int
	Queries int
	K       int
	// Scan names the scan whose batches may have written range partials
	// (CachedShardsInput.Scan); empty: every shard has its own.
	Scan string `json:",omitempty"`
	// Keyed says the shards' own partials are under Scan too (TopKKey);
	// passes started before they were are not.
	Keyed bool `json:",omitempty"`
	// Similarity is the model the pool was scanned with, whose cache
	// entries hold its rejects: a pool none of whose images was
	// embedded fails naming the first. Zero in passes started before.
	Similarity ModelRef `json:",omitzero"`
}

// MergeTopKResult says where the merged neighbours are.
type MergeTopKResult struct {
	Key  string
	Rows int
}

type candidate struct {
	knn.Neighbor
	item dataset.Item
	// borrowed says item's strings are views of an Arrow record's buffers
	// (forEachNeighbor), which they keep from being freed while held.
	borrowed bool
}

// own makes c's strings its own, so that holding c holds no buffer of the
// record it was read from.
func (c *candidate) own() {
	if c.borrowed {
		it := &c.item
		it.Key, it.Label, it.Domain, it.Version = strings.Clone(it.Key), strings.Clone(it.Label), strings.Clone(it.Domain), strings.Clone(it.Version)
		c.borrowed = false
	}
}

// mergeAhead is how many partials MergeTopK reads ahead of the one it
// merges. A remote store answers each read after its latency: one at a
// time, the 500,000 partials of a pool of 10^9 images would wait hours.
// Each holds Queries×K candidates, about 1 MB for 1,000 queries: 32 of
// them go through 2,000 a second from a store that answers in 50 ms.
const mergeAhead = 32

// MergeTopK merges the per-shard partial top-k (a batch's range partial
// standing for its shards') into each query's global K nearest, ties
// broken by pool id. It streams: memory is Queries×K×2 candidates, and
// mergeAhead partials, whatever the number of shards.
func (a *Activities) MergeTopK(ctx context.Context, in MergeTopKInput) (MergeTopKResult, error) {
	res := MergeTopKResult{Key: RunKey(in.Run, "neighbors.arrow")}
	shardScan := ""
	if in.Keyed {
		shardScan = in.Scan
	}
	keys, err := a.partialKeys(ctx, in.Run, in.Scan, shardScan, in.Shards)
	if err != nil {
		return res, err
	}
	partials := ahead.Read(ctx, len(keys), mergeAhead, func(ctx context.Context, i int) (*store.ArrowFile, error) {
		return store.OpenArrow(ctx, a.Bucket, keys[i], a.Mem)
	}, func(f *store.ArrowFile) { f.Close() })
	defer partials.Stop()
	best := make([][]candidate, in.Queries)
	var scratch []candidate
	for i, key := range keys {
		f, err := partials.Next()
		if gcerrors.Code(err) == gcerrors.NotFound && in.Keyed {
			// A scan's partials go once its pass has reported (DropScan):
			// a pass reset in Temporal to before its merge finds them gone.
			return res, invalid("partial %s is missing (a pass deletes its scan's partials once it has reported: reset it in Temporal to a point before its pool's plan completed, or run it again)", key)
		}
		if err != nil {
			return res, store.Classify(err, key)
		}
		// A partial lists each query's neighbours nearest first: fold
		// each list into the query's best with a linear merge
		// (knn.MergeSorted), which stops after K and skips a list that
		// cannot improve the best at all.
		part, cur := []candidate(nil), int32(-1)
		fold := func() {
			if cur >= 0 && len(part) > 0 {
				if !slices.IsSortedFunc(part, compareCandidates) {
					slices.SortFunc(part, compareCandidates)
				}
				scratch = knn.MergeSorted(scratch[:0], best[cur], part, in.K, candidateNeighbor)
				best[cur] = append(best[cur][:0], scratch...)
				// What this partial adds is kept past it: a pool's best
				// come from thousands of partials, whose string buffers
				// (a few MB each) would all stay in memory.
				for j := range best[cur] {
					best[cur][j].own()
				}
			}
			part = part[:0]
		}
		for r := 0; r < f.NumRecords(); r++ {
			rec, err := f.Record(r)
			if err != nil {
				f.Close()
				return res, fmt.Errorf("activities: %s: %w", key, err)
			}
			bad, stray := int32(0), false
			forEachNeighbor(rec, func(q int32, c candidate) {
				if q < 0 || int(q) >= in.Queries {
					bad, stray = q, true
					return
				}
				if q != cur {
					fold()
					cur = q
				}
				part = append(part, c)
			})
			if stray {
				f.Close()
				// Not this scan's: another's queries (a partial left
				// where this scan's was read, by a pass of old).
				return res, invalid("partial %s has neighbours of query %d, but this pass has %d queries: it is not of this pass's scan", key, bad, in.Queries)
			}
		}
		fold()
		f.Close()
		heartbeat(ctx, i) // the SDK sends a few a timeout; a large partial takes a second
	}
	if in.Queries > 0 && !slices.ContainsFunc(best, func(b []candidate) bool { return len(b) > 0 }) {
		// Not one pool image embedded (all of them corrupt, say): every
		// method would add nothing, and the pass would report train
		// alone as if it had compared anything.
		why := ""
		if in.Similarity.Path != "" {
			if _, rejects, err := a.shardRejects(ctx, in.Run, Pool, 0, in.Similarity.Spec); err == nil && len(rejects) > 0 {
				why = fmt.Sprintf(" (the first, %s: %s)", redact.URL(rejects[0].URI), redact.Text(rejects[0].Reason))
			}
		}
		return res, invalid("data.pool: not one of its images could be read and decoded%s, so there is nothing to select from: fix them (`starter run -reread` reads again those that could not be read; one that did not decode is decoded again when its version changes)", why)
	}
	res.Rows, err = func() (int, error) {
		defer beating(ctx, func() []any { return nil })() // queries × k rows: a large file
		return a.writeNeighbors(ctx, res.Key, best)
	}()
	if err == nil && in.Keyed {
		// What earlier passes under this ID left (each scan its own
		// partials, about 1 MB a shard), in the background: the pass
		// need not wait on it, and a failure costs only storage.
		go a.dropOtherScans(context.WithoutCancel(ctx), in.Run, in.Scan)
	}
	return res, err
}

// DropScanInput names a pass's scan.
type DropScanInput struct {
	Run, Scan string
}

// DropScan deletes a scan's partials, per shard and per range, once the
// pass has merged them into neighbors.arrow and reported: about a MB a
// shard (500 GB for a new pool of 10^9 images), read by the merge alone.
// It deletes dropAtOnce at a time and returns how many it deleted.
func (a *Activities) DropScan(ctx context.Context, in DropScanInput) (int, error) {
	if in.Scan == "" {
		return 0, invalid("DropScan: no scan named") // would take every scan's
	}
	var deleted atomic.Int64
	defer beating(ctx, func() []any { return []any{deleted.Load()} })()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(dropAtOnce)
	for _, dir := range []string{RunKey(in.Run, "topk/"+in.Scan+"/"), topKRanges(in.Run, in.Scan)} {
		err := store.List(gctx, a.Bucket, &blob.ListOptions{Prefix: dir}, func(obj *blob.ListObject) error {
			g.Go(func() error {
				if err := a.Bucket.Delete(gctx, obj.Key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
					return store.Classify(err, obj.Key)
				}
				deleted.Add(1)
				return nil
			})
			return nil
		})
		if err != nil {
			// A failed delete cancels the listing too: its error is the one.
			return int(deleted.Load()), cmp.Or(g.Wait(), err)
		}
	}
	err := g.Wait()
	return int(deleted.Load()), err
}

// dropAtOnce is how many deletions DropScan keeps in flight: one request
// each, a store's latency apart.
const dropAtOnce = 32

// dropOtherScans deletes the partials of a run's scans but scan: its
// per-shard and range partials' folders, and the per-shard partials of
// passes from before scans kept theirs apart. Never this scan's, which a
// retried merge still reads, nor lists them: the folders are listed by
// name first, and only the others' read through.
func (a *Activities) dropOtherScans(ctx context.Context, run, scan string) {
	drop := func(opts *blob.ListOptions, each func(*blob.ListObject)) {
		it := a.Bucket.List(opts)
		for {
			obj, err := it.Next(ctx)
			if err != nil {
				return // io.EOF, or a listing that failed: the rest stays
			}
			each(obj)
		}
	}
	for _, dir := range []string{RunKey(run, "topk/"), RunKey(run, "topk-ranges/")} {
		drop(&blob.ListOptions{Prefix: dir, Delimiter: "/"}, func(obj *blob.ListObject) {
			switch {
			case !obj.IsDir: // a partial of the layout before scans
				a.Bucket.Delete(ctx, obj.Key)
			case obj.Key != dir+scan+"/":
				drop(&blob.ListOptions{Prefix: obj.Key}, func(o *blob.ListObject) { a.Bucket.Delete(ctx, o.Key) })
			}
		})
	}
}

// partialKeys lists the partials that cover a scan's shards in shard
// order: a range's (TopKRangeKey) where a CachedShards batch wrote one,
// else each shard's (TopKKey). A scan's batches do not overlap, and a
// retried batch writes the same range again. But a pass reset in Temporal
// to a point after its scan was named replays the name (scanName) and may
// cut its batches elsewhere (other shards found cached): then both
// executions' ranges of the same shards are there, overlapping, and the
// shards are tiled with those ranges and shard partials that exist,
// fewest reads. (One reset to before the pool's plan names another scan.)
func (a *Activities) partialKeys(ctx context.Context, run, scan, shardScan string, shards int) ([]string, error) {
	ranges := map[int][]int{} // a range's first shard → its ends
	if scan != "" {
		prefix := topKRanges(run, scan)
		err := store.List(ctx, a.Bucket, &blob.ListOptions{Prefix: prefix}, func(obj *blob.ListObject) error {
			var first, end int
			if _, err := fmt.Sscanf(strings.TrimPrefix(obj.Key, prefix), "%d-%d.arrow", &first, &end); err == nil && obj.Key == TopKRangeKey(run, scan, first, end) && first < end && end <= shards {
				ranges[first] = append(ranges[first], end)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("activities: list %s: %w", prefix, err)
		}
	}
	overlap := false
	for first, ends := range ranges {
		for _, end := range ends {
			for s := first + 1; s < end && !overlap; s++ {
				_, overlap = ranges[s]
			}
		}
		overlap = overlap || len(ends) > 1
	}
	keys := make([]string, 0, shards)
	if !overlap { // one execution's ranges: the rest is shards' partials
		for i := 0; i < shards; {
			if ends, ok := ranges[i]; ok {
				keys = append(keys, TopKRangeKey(run, scan, i, ends[0]))
				i = ends[0]
				continue
			}
			keys = append(keys, TopKKey(run, shardScan, i))
			i++
		}
		return keys, nil
	}
	have := map[int]bool{} // the shards with a partial of their own
	prefix := strings.TrimSuffix(TopKKey(run, shardScan, 0), "000000.arrow")
	err := store.List(ctx, a.Bucket, &blob.ListOptions{Prefix: prefix, Delimiter: "/"}, func(obj *blob.ListObject) error {
		var i int
		if _, err := fmt.Sscanf(strings.TrimPrefix(obj.Key, prefix), "%d.arrow", &i); err == nil && obj.Key == TopKKey(run, shardScan, i) {
			have[i] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("activities: list %s: %w", prefix, err)
	}
	// reads[i] is the fewest partials that cover shards i to the end
	// (-1: none do), step[i] the end of the first of them, a range's
	// when from[i].
	reads, step, from := make([]int, shards+1), make([]int, shards+1), make([]bool, shards+1)
	for i := shards - 1; i >= 0; i-- {
		reads[i] = -1
		take := func(end int, isRange bool) {
			if reads[end] >= 0 && (reads[i] < 0 || reads[end]+1 < reads[i]) {
				reads[i], step[i], from[i] = reads[end]+1, end, isRange
			}
		}
		for _, end := range ranges[i] {
			take(end, true)
		}
		if have[i] {
			take(i+1, false)
		}
	}
	if reads[0] < 0 {
		return nil, fmt.Errorf("activities: the partials of scan %s overlap and leave a shard uncovered: search its shards again", scan)
	}
	for i := 0; i < shards; i = step[i] {
		if from[i] {
			keys = append(keys, TopKRangeKey(run, scan, i, step[i]))
		} else {
			keys = append(keys, TopKKey(run, shardScan, i))
		}
	}
	return keys, nil
}

// writeNeighbors writes each query's neighbours, nearest first, at key,
// and returns how many rows that made.
func (a *Activities) writeNeighbors(ctx context.Context, key string, best [][]candidate) (int, error) {
	b := newNeighborBuilder(a)
	defer b.release()
	for q, list := range best {
		for r, c := range list {
			b.add(int32(q), int32(r), c.Distance, c.item)
		}
	}
	rec := b.record()
	defer rec.Release()
	return b.rows, store.WriteArrow(ctx, a.Bucket, key, schemas.Neighbors, a.Mem, rec)
}

func candidateNeighbor(c candidate) knn.Neighbor { return c.Neighbor }

func compareCandidates(x, y candidate) int { return knn.Compare(x.Neighbor, y.Neighbor) }

// neighborBuilder accumulates rows of the Neighbors schema.
type neighborBuilder struct {
	rb   *array.RecordBuilder
	rows int
}

func newNeighborBuilder(a *Activities) *neighborBuilder {
	return &neighborBuilder{rb: array.NewRecordBuilder(a.Mem, schemas.Neighbors)}
}

// reserve makes room for rows more rows with strings as long as like's,
// so that appending them does not regrow (and copy) the builders.
func (b *neighborBuilder) reserve(rows int, like dataset.Item) {
	b.rb.Reserve(rows)
	for f, s := range []string{like.Key, like.Label, like.Domain, like.Version} {
		b.rb.Field(4 + f).(*array.StringBuilder).ReserveData(rows * len(s))
	}
}

func (b *neighborBuilder) add(q, rank int32, dist float32, it dataset.Item) {
	b.rb.Field(0).(*array.Int32Builder).Append(q)
	b.rb.Field(1).(*array.Int32Builder).Append(rank)
	b.rb.Field(2).(*array.Float32Builder).Append(dist)
	b.rb.Field(3).(*array.Int64Builder).Append(it.ID)
	b.rb.Field(4).(*array.StringBuilder).Append(it.Key)
	b.rb.Field(5).(*array.StringBuilder).Append(it.Label)
	b.rb.Field(6).(*array.StringBuilder).Append(it.Domain)
	b.rb.Field(7).(*array.StringBuilder).Append(it.Version)
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
	var version *array.String // none in a file of a worker before it
	if rec.NumCols() > 7 {
		version = rec.Column(7).(*array.String)
	}
	for i := 0; i < int(rec.NumRows()); i++ {
		it := dataset.Item{ID: id.Value(i), Key: uri.Value(i), Label: label.Value(i), Domain: domain.Value(i)}
		if version != nil {
			it.Version = version.Value(i)
		}
		fn(q.Value(i), candidate{Neighbor: knn.Neighbor{ID: id.Value(i), Distance: dist.Value(i)}, item: it, borrowed: true})
	}
}
