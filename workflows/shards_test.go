package workflows

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/testsuite"

	"dcd/activities"
)

// A recurring pool scan looks its shards up in the cache in batches of
// cachedBatch; a new shard among them falls back to EmbedShard and
// TopKShard. Every shard is searched exactly once, and new shards are
// embedded on the embedding queue only.
func TestCachedShardsSearchedInBatches(t *testing.T) {
	env := chainEnv()
	var a *activities.Activities
	var mu sync.Mutex
	searched, embedded, batches := map[int]int{}, map[int]int{}, 0
	lookUp := func(in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		if isNew(in.Shard) {
			if in.CachedOnly {
				return activities.EmbedShardResult{}, nil
			}
			embedded[in.Shard]++
			return activities.EmbedShardResult{Images: 5}, nil
		}
		if in.K != 3 {
			return activities.EmbedShardResult{}, errors.New("EmbedShard without K")
		}
		searched[in.Shard]++
		return activities.EmbedShardResult{Images: 5, Cached: true, TopK: &activities.TopKShardResult{Rows: 6}}, nil
	}
	env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
			mu.Lock()
			defer mu.Unlock()
			if in.CachedOnly {
				return activities.EmbedShardResult{}, errors.New("a shard looked up on its own")
			}
			return lookUp(in)
		})
	env.OnActivity(a.CachedShards, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CachedShardsInput) (activities.CachedShardsResult, error) {
			mu.Lock()
			defer mu.Unlock()
			batches++
			if in.End-in.First > cachedBatch {
				return activities.CachedShardsResult{}, fmt.Errorf("a batch of %d shards", in.End-in.First)
			}
			var out activities.CachedShardsResult
			for i := in.First; i < in.End; i++ {
				r, err := lookUp(activities.EmbedShardInput{Run: in.Run, Dataset: in.Dataset, Shard: i, Model: in.Model, K: in.K, CachedOnly: true})
				if err != nil {
					return out, err
				}
				out.Shards = append(out.Shards, r)
			}
			return out, nil
		})
	env.OnActivity(a.TopKShard, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.TopKShardInput) (activities.TopKShardResult, error) {
			mu.Lock()
			defer mu.Unlock()
			searched[in.Shard]++
			return activities.TopKShardResult{}, nil
		})
	const n = ShardsPerRun
	runRecurringChain(t, env, ShardsInput{Run: "r", Dataset: activities.Pool, First: 0, End: n, Window: 4, K: 3, Heartbeat: time.Minute, Timeout: time.Hour})
	for i := range n {
		if searched[i] != 1 {
			t.Errorf("shard %d searched %d times", i, searched[i])
		}
		if want := map[bool]int{true: 1}[isNew(i)]; embedded[i] != want {
			t.Errorf("shard %d embedded %d times, want %d", i, embedded[i], want)
		}
	}
	if want := (n + cachedBatch - 1) / cachedBatch; batches != want {
		t.Errorf("%d batches for %d shards, want %d", batches, n, want)
	}
}

// A recurring pass's chain of another set (train, test, E_heldout: no
// search) looks its shards up in the cache in batches on the cpu queue
// too, rather than sending every one to the embedding queue: a pass on
// cached features needs no embedding worker.
func TestCachedSetShardsLookedUpInBatches(t *testing.T) {
	env := chainEnv()
	var a *activities.Activities
	var mu sync.Mutex
	embedded, batches, calls := map[int]int{}, 0, 0
	env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
			mu.Lock()
			defer mu.Unlock()
			if q := activity.GetInfo(ctx).TaskQueue; in.CachedOnly || q != GPUQueue {
				return activities.EmbedShardResult{}, fmt.Errorf("shard %d sent to EmbedShard on %s, cached only %v", in.Shard, q, in.CachedOnly)
			}
			calls++
			if isNew(in.Shard) {
				embedded[in.Shard]++
			}
			return activities.EmbedShardResult{Images: 5, Cached: !isNew(in.Shard)}, nil
		})
	env.OnActivity(a.CachedShards, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.CachedShardsInput) (activities.CachedShardsResult, error) {
			mu.Lock()
			defer mu.Unlock()
			batches++
			if q := activity.GetInfo(ctx).TaskQueue; in.K != 0 || q != CPUQueue {
				return activities.CachedShardsResult{}, fmt.Errorf("a batch with k %d on %s", in.K, q)
			}
			var out activities.CachedShardsResult
			for i := in.First; i < in.End; i++ {
				out.Shards = append(out.Shards, activities.EmbedShardResult{Images: 5, Cached: !isNew(i)})
			}
			return out, nil
		})
	const n = ShardsPerRun
	runRecurringChain(t, env, ShardsInput{Run: "r", Dataset: activities.Train, First: 0, End: n, Window: 4, Heartbeat: time.Minute, Timeout: time.Hour})
	for i := range n {
		if want := map[bool]int{true: 1}[isNew(i)]; embedded[i] != want {
			t.Errorf("shard %d embedded %d times, want %d", i, embedded[i], want)
		}
	}
	// Only the new shards are embedded; every shard goes out in a batch.
	if calls > 2*(n/10) || batches < n/cachedBatch {
		t.Errorf("%d of %d shards sent to EmbedShard, %d batches looked up: want the cached ones in batches", calls, n, batches)
	}
}

// runRecurringChain runs a chain of in.End shards of 5 images, all but a
// tenth of them cached, and checks its counts.
func runRecurringChain(t *testing.T, env *testsuite.TestWorkflowEnvironment, in ShardsInput) {
	t.Helper()
	env.ExecuteWorkflow(ShardsWorkflow, in)
	if !env.IsWorkflowCompleted() || env.GetWorkflowError() != nil {
		t.Fatalf("completed %v, error %v", env.IsWorkflowCompleted(), env.GetWorkflowError())
	}
	var res ShardsResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if n := in.End; res.Shards != n || res.Cached != n-n/10 || res.Images != 5*n {
		t.Fatalf("result %+v", res)
	}
}

// chainEnv is a test environment for ShardsWorkflow.
func chainEnv() *testsuite.TestWorkflowEnvironment {
	var ts testsuite.WorkflowTestSuite
	env := ts.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(ShardsWorkflow)
	return env
}

// isNew says which shards of a recurring chain are new (a tenth), not in
// the cache; runRecurringChain counts on it.
func isNew(i int) bool { return i%10 == 7 }
