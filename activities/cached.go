package activities

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"

	"dcd/internal/dataset"
	"dcd/internal/knn"
)

// CachedShardsInput is a run of one dataset's shards, [First, End), to
// look up in the features cache.
type CachedShardsInput struct {
	Run     string
	Dataset string
	First   int
	End     int
	Model   ModelRef
	// K > 0 (pool shards): search each cached shard, as EmbedShard does.
	K int
	// Scan names the pass's scan, under which a batch whose shards are
	// all cached writes one partial top-k for them (TopKRangeKey); empty,
	// as from passes started before, each shard writes its own.
	Scan string `json:",omitempty"`
	// Keyed has a shard that writes its own partial write it under Scan
	// (TopKKey), as the pass's MergeTopK then reads it.
	Keyed bool `json:",omitempty"`
	// Reread is EmbedShardInput's.
	Reread bool `json:",omitempty"`
}

// CachedShardsResult is each shard's lookup, in order: EmbedShard's result
// with CachedOnly, Cached false for a shard the cache lacks.
type CachedShardsResult struct {
	Shards []EmbedShardResult
}

// CachedShards looks up a run of shards in the features cache, all at
// once, and searches those of the pool it finds (into one partial for the
// batch when it finds them all: rangePartial): a recurring pass's scan,
// as a regular activity that any worker polling the cpu queue takes. A
// scan of cached shards is bound by the CPUs and storage of the workers
// that search, so it must spread over them as they are added, which the
// task queue does: each worker takes what its free slots allow. The
// searches' memory is bounded by the worker (Sessions.hold,
// knn.Concurrent) however many run.
func (a *Activities) CachedShards(ctx context.Context, in CachedShardsInput) (CachedShardsResult, error) {
	out := make([]EmbedShardResult, max(in.End-in.First, 0))
	var into *rangePartial
	if in.K > 0 && in.Dataset == Pool && in.Scan != "" {
		into = newRangePartial(TopKRangeKey(in.Run, in.Scan, in.First, in.End), in.First, in.End, in.K)
	}
	g, gctx := errgroup.WithContext(ctx)
	// The batch's shards end together (rangePartial), so beat while they
	// run rather than as each ends.
	defer beating(ctx, func() []any { return nil })()
	for i := range out {
		g.Go(func() (err error) {
			defer func() {
				// Temporal recovers an activity's own panics, not this
				// goroutine's: a damaged shard must fail the batch, not
				// the worker.
				if p := recover(); p != nil {
					err = fmt.Errorf("activities: look up %s: %v", ShardKey(in.Run, in.Dataset, in.First+i), p)
				}
			}()
			own := EmbedShardInput{Run: in.Run, Dataset: in.Dataset, Shard: in.First + i, Model: in.Model, K: in.K, CachedOnly: true, Reread: in.Reread}
			if in.Keyed {
				own.Scan = in.Scan
			}
			r, err := a.embedShardInto(gctx, own, into)
			out[i] = r
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return CachedShardsResult{}, err
	}
	switch {
	case into != nil && into.found(): // every search went into the range's partial
		if _, err := a.writeNeighbors(ctx, into.key, into.best); err != nil {
			return CachedShardsResult{}, err
		}
	case into != nil:
		// The shards wrote partials of their own: a range partial of an
		// earlier execution of the scan (a reset) would win over them in
		// the merge.
		if err := a.Bucket.Delete(ctx, into.key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return CachedShardsResult{}, err
		}
	}
	return CachedShardsResult{Shards: out}, nil
}

// rangePartial gathers the neighbours of a CachedShards batch's pool
// shards into one partial top-k, written at TopKRangeKey, when the cache
// has every shard of the batch: a sixteenth of the partials to write, and
// for MergeTopK to read, from a recurring scan, and of their bytes (each
// holds Queries×K neighbours, whatever it covers).
//
// Whether every shard is found is known only once every lookup has ended,
// so each search waits (wait) for every shard of its batch to settle
// (settle) before its neighbours go into the range (fold) or, one shard
// missing, into its own partial as without a batch. A search waits having
// given back its features' bytes (Sessions.hold) and its k-NN, which the
// lookups it waits for may need.
type rangePartial struct {
	key string
	k   int

	mu      sync.Mutex
	pending map[int]bool
	all     bool          // every shard settled so far was found; read once settled is closed
	settled chan struct{} // closed when no shard is pending
	best    [][]candidate // each query's K nearest so far
	scratch []candidate
	part    []candidate
}

func newRangePartial(key string, first, end, k int) *rangePartial {
	p := &rangePartial{key: key, k: k, pending: map[int]bool{}, all: true, settled: make(chan struct{})}
	for i := first; i < end; i++ {
		p.pending[i] = true
	}
	if len(p.pending) == 0 {
		close(p.settled)
	}
	return p
}

// settle says whether shard was found in the cache (and searched); only
// its first call counts.
func (p *rangePartial) settle(shard int, found bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.pending[shard] {
		return
	}
	delete(p.pending, shard)
	p.all = p.all && found
	if len(p.pending) == 0 {
		close(p.settled)
	}
}

// wait waits for every shard to settle and says whether all were found.
func (p *rangePartial) wait(ctx context.Context) (bool, error) {
	select {
	case <-p.settled:
		return p.all, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// found says whether every shard was found, once all have settled.
func (p *rangePartial) found() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending) == 0 && p.all
}

// fold merges one shard's neighbours, each query's nearest first, whose
// Index is a row of items, into the range's, and returns how many it had.
func (p *rangePartial) fold(nearest [][]knn.Neighbor, items []dataset.Item) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.best) < len(nearest) {
		p.best = append(p.best, nil)
	}
	rows := 0
	for q, list := range nearest {
		p.part = p.part[:0]
		for _, n := range list {
			p.part = append(p.part, candidate{Neighbor: n, item: items[n.Index]})
		}
		rows += len(list)
		if !slices.IsSortedFunc(p.part, compareCandidates) {
			slices.SortFunc(p.part, compareCandidates)
		}
		p.scratch = knn.MergeSorted(p.scratch[:0], p.best[q], p.part, p.k, candidateNeighbor)
		p.best[q] = append(p.best[q][:0], p.scratch...)
	}
	return rows
}
