package activities

import (
	"context"
	"fmt"

	"go.temporal.io/sdk/activity"
	"golang.org/x/sync/errgroup"
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
}

// CachedShardsResult is each shard's lookup, in order: EmbedShard's result
// with CachedOnly, Cached false for a shard the cache lacks.
type CachedShardsResult struct {
	Shards []EmbedShardResult
}

// CachedShards looks up a run of shards in the features cache, all at
// once, and searches those of the pool it finds: a recurring pass's scan,
// as a regular activity that any worker polling the cpu queue takes. A
// scan of cached shards is bound by the CPUs and storage of the workers
// that search, so it must spread over them as they are added, which the
// task queue does: each worker takes what its free slots allow. The
// searches' memory is bounded by the worker (Sessions.hold,
// knn.Concurrent) however many run.
func (a *Activities) CachedShards(ctx context.Context, in CachedShardsInput) (CachedShardsResult, error) {
	out := make([]EmbedShardResult, max(in.End-in.First, 0))
	g, gctx := errgroup.WithContext(ctx)
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
			r, err := a.EmbedShard(gctx, EmbedShardInput{
				Run: in.Run, Dataset: in.Dataset, Shard: in.First + i, Model: in.Model, K: in.K, CachedOnly: true,
			})
			out[i] = r
			activity.RecordHeartbeat(ctx)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return CachedShardsResult{}, err
	}
	return CachedShardsResult{Shards: out}, nil
}
