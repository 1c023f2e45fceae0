package workflows_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"dcd/activities"
	"dcd/workflows"
)

// A chain scanning cached shards answers its progress query within a few
// seconds, mid-scan: its workflow task ends between the batches of
// lookups, which run as activities, not in local activities that would
// keep it open. Every shard is searched exactly once, and the chain's
// history replays.
func TestCachedScanAnswersQueries(t *testing.T) {
	c, _ := devServer(t)
	var mu sync.Mutex
	searched := map[int]int{}
	var local atomic.Int64
	// A cached pool shard that takes 320 ms to search, locally or not,
	// as from a remote store.
	embed := func(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		time.Sleep(320 * time.Millisecond)
		if !in.CachedOnly {
			return activities.EmbedShardResult{}, errors.New("a cached shard embedded")
		}
		if activity.GetInfo(ctx).IsLocalActivity {
			local.Add(1)
		}
		mu.Lock()
		searched[in.Shard]++
		mu.Unlock()
		return activities.EmbedShardResult{Images: 1, Cached: true, TopK: &activities.TopKShardResult{}}, nil
	}
	chainWorkers(t, c, embed)

	// 300 shards in 19 batches, two at a time: about 3 s of searches.
	const n = 300
	ctx := context.Background()
	id, run := startChain(t, c, "query", n, 4)
	finished := make(chan error, 1)
	go func() {
		var r workflows.ShardsResult
		finished <- run.Get(ctx, &r)
	}()
	midScan := 0
	for {
		select {
		case err := <-finished:
			if err != nil {
				t.Fatal(err)
			}
			if midScan == 0 {
				t.Error("no progress query answered while the shards were being searched")
			}
			if n := local.Load(); n > 0 {
				t.Errorf("%d shards searched in local activities", n)
			}
			mu.Lock()
			defer mu.Unlock()
			for i := range n {
				if searched[i] != 1 {
					t.Errorf("shard %d searched %d times", i, searched[i])
				}
			}
			replay(t, c, id)
			return
		case <-time.After(300 * time.Millisecond):
		}
		qctx, cancel := context.WithTimeout(ctx, 4*time.Second)
		v, err := c.QueryWorkflow(qctx, id, "", workflows.ProgressQuery)
		late := qctx.Err() != nil // a loaded machine's miss: the next one may answer
		cancel()
		var r workflows.ShardsResult
		if err == nil {
			err = v.Get(&r)
		}
		switch {
		case err != nil && len(finished) == 0 && !late:
			t.Fatalf("progress query mid-scan: %v", err)
		case err == nil && r.Shards > 0 && r.Shards < n:
			midScan++
		}
	}
}

// A recurring scan on a remote store: cached shards, whose searches wait
// mostly on the store, run many at once (in batches), while shards that must be embedded run the window at once, as
// configured, on a worker that could run more. Every shard is searched or
// embedded exactly once, and the chain's history replays.
func TestCachedShardsRunWide(t *testing.T) {
	c, _ := devServer(t)
	const n, window, fresh = 240, 4, 160 // shards from fresh on are new
	var mu sync.Mutex
	done := map[int]int{}
	var cachedOnly, embedding, maxCachedOnly, maxEmbedding int
	track := func(count, most *int) func() {
		mu.Lock()
		defer mu.Unlock()
		*count++
		*most = max(*most, *count)
		return func() {
			mu.Lock()
			defer mu.Unlock()
			*count--
		}
	}
	embed := func(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		if in.CachedOnly {
			defer track(&cachedOnly, &maxCachedOnly)()
		} else {
			defer track(&embedding, &maxEmbedding)()
		}
		time.Sleep(100 * time.Millisecond)
		cached := in.Shard < fresh
		if in.CachedOnly && !cached {
			return activities.EmbedShardResult{}, nil
		}
		mu.Lock()
		done[in.Shard]++
		mu.Unlock()
		return activities.EmbedShardResult{Images: 1, Cached: cached, TopK: &activities.TopKShardResult{}}, nil
	}
	// Slots enough for more than the window: the window, not the
	// worker, must be what holds the embeddings back.
	chainWorkersWith(t, c, worker.Options{MaxConcurrentActivityExecutionSize: 4 * window}, embed)
	id, r := runChain(t, c, "wide", n, window)
	if r.Shards != n || r.Cached != fresh {
		t.Errorf("result %+v, want %d shards, %d cached", r, n, fresh)
	}
	for i := range n {
		if done[i] != 1 {
			t.Errorf("shard %d searched or embedded %d times", i, done[i])
		}
	}
	if maxCachedOnly < 4*window {
		t.Errorf("at most %d cached shards searched at once, want at least %d", maxCachedOnly, 4*window)
	}
	if maxEmbedding != window {
		t.Errorf("at most %d shards embedded at once, window %d", maxEmbedding, window)
	}
	replay(t, c, id)
}

// chainWorkers runs a pool chain's workflow on both queues of c, with
// embed as its EmbedShard (and, shard by shard, as its CachedShards). Each
// queue runs two activities at once, as a two-CPU worker does.
func chainWorkers(t *testing.T, c client.Client, embed func(context.Context, activities.EmbedShardInput) (activities.EmbedShardResult, error)) {
	t.Helper()
	chainWorkersWith(t, c, worker.Options{MaxConcurrentActivityExecutionSize: 2}, embed)
}

// chainWorkersWith is chainWorkers with the workers' options.
func chainWorkersWith(t *testing.T, c client.Client, opts worker.Options, embed func(context.Context, activities.EmbedShardInput) (activities.EmbedShardResult, error)) {
	t.Helper()
	for _, q := range []string{workflows.CPUQueue, workflows.GPUQueue} {
		w := worker.New(c, q, opts)
		w.RegisterWorkflow(workflows.ShardsWorkflow)
		w.RegisterActivityWithOptions(embed, activity.RegisterOptions{Name: "EmbedShard"})
		w.RegisterActivityWithOptions(cachedShards(embed), activity.RegisterOptions{Name: "CachedShards"})
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
	}
}

// startChain starts a pool chain over n shards, K = 5, with a window of
// window, under an ID of prefix and the time.
func startChain(t *testing.T, c client.Client, prefix string, n, window int) (string, client.WorkflowRun) {
	t.Helper()
	id := prefix + "-" + time.Now().UTC().Format("150405.000")
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.ShardsWorkflow, workflows.ShardsInput{
		Run: id, Dataset: activities.Pool, First: 0, End: n, Window: window, K: 5, Heartbeat: time.Minute, Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	return id, run
}

// runChain is startChain, waiting for the chain's result.
func runChain(t *testing.T, c client.Client, prefix string, n, window int) (string, workflows.ShardsResult) {
	t.Helper()
	id, run := startChain(t, c, prefix, n, window)
	var r workflows.ShardsResult
	if err := run.Get(context.Background(), &r); err != nil {
		t.Fatal(err)
	}
	return id, r
}

// cachedShards is a CachedShards that looks up each shard with embed, all
// at once, as the real one does with EmbedShard.
func cachedShards(embed func(context.Context, activities.EmbedShardInput) (activities.EmbedShardResult, error)) func(context.Context, activities.CachedShardsInput) (activities.CachedShardsResult, error) {
	return func(ctx context.Context, in activities.CachedShardsInput) (activities.CachedShardsResult, error) {
		out := make([]activities.EmbedShardResult, in.End-in.First)
		errs := make([]error, len(out))
		var wg sync.WaitGroup
		for i := range out {
			wg.Go(func() {
				out[i], errs[i] = embed(ctx, activities.EmbedShardInput{
					Run: in.Run, Dataset: in.Dataset, Shard: in.First + i, Model: in.Model, K: in.K, CachedOnly: true,
				})
			})
		}
		wg.Wait()
		return activities.CachedShardsResult{Shards: out}, errors.Join(errs...)
	}
}

// A recurring scan spreads over the workers: each of two workers, with
// one cpu slot each, looks up and searches a share of the chain's cached
// shards, wherever the chain's workflow runs. Every shard is searched
// exactly once.
func TestCachedScanSpreadsOverWorkers(t *testing.T) {
	c, _ := devServer(t)
	const n, workers = 320, 2
	var mu sync.Mutex
	searched := map[int]int{}
	byWorker := make([]int, workers)
	for w := range workers {
		// A cached shard takes 100 ms to search, as from a remote store.
		embed := func(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
			time.Sleep(100 * time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			searched[in.Shard]++
			byWorker[w]++
			return activities.EmbedShardResult{Images: 1, Cached: true, TopK: &activities.TopKShardResult{}}, nil
		}
		chainWorkersWith(t, c, worker.Options{MaxConcurrentActivityExecutionSize: 1, Identity: fmt.Sprintf("spread-%d", w)}, embed)
	}
	_, r := runChain(t, c, "spread", n, 4)
	if r.Shards != n || r.Cached != n {
		t.Errorf("result %+v, want %d shards, all cached", r, n)
	}
	for i := range n {
		if searched[i] != 1 {
			t.Errorf("shard %d searched %d times", i, searched[i])
		}
	}
	for w, b := range byWorker {
		if b < n/4 {
			t.Errorf("worker %d searched %d of the %d shards, want at least a quarter", w, b, n)
		}
	}
}
