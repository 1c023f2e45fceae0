package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"dcd/activities"
)

// ShardsInput is a range of one dataset's shards to embed (and, for the
// pool, to search). All state lives here, so continue-as-new carries it.
type ShardsInput struct {
	Run       string
	Dataset   string
	Model     activities.ModelRef
	First     int // next shard to start
	End       int // one past the last shard
	Window    int // shards embedded at once
	BatchSize int
	// PartSize is activities.EmbedShardInput.PartSize; passes leave it 0
	// (parts cut by time), tests set it to cut parts they can count.
	PartSize int
	// K > 0 searches each pool shard for the K nearest images per query.
	K         int
	Heartbeat time.Duration
	Timeout   time.Duration
	Done      ShardsResult // accumulated by earlier runs of this chain
	// LastCached says the shard of the previous run that finished last
	// was cached, so this run starts by looking its shards up in the
	// cache (runShards); since everyRunLooksUpChange every run does.
	LastCached bool `json:",omitempty"`
	// Scan names the pass's scan, under which batches of cached pool
	// shards write one partial top-k each (activities.CachedShardsInput).
	Scan string `json:",omitempty"`
	// Keyed has each shard's own partial written under Scan too
	// (activities.TopKKey); chains of passes started before it was do
	// not.
	Keyed bool `json:",omitempty"`
	// RetryFor is the pass's timeouts.retry_for (withRetries).
	RetryFor time.Duration `json:",omitempty"`
	// Reread is PassInput.Reread.
	Reread bool `json:",omitempty"`
}

// partialScan is the scan a shard's own partial is written under.
func (in ShardsInput) partialScan() string {
	if in.Keyed {
		return in.Scan
	}
	return ""
}

// ShardsResult counts the work done on a range of shards.
type ShardsResult struct {
	Shards  int
	Images  int
	Rejects int
	Cached  int
	// Resumed counts images that retried attempts found already embedded
	// by an attempt that died.
	Resumed int
}

func (r *ShardsResult) add(o ShardsResult) {
	r.Shards += o.Shards
	r.Images += o.Images
	r.Rejects += o.Rejects
	r.Cached += o.Cached
	r.Resumed += o.Resumed
}

// ShardsPerRun bounds one run's history: each shard adds about a dozen
// events, so a run stays below the 10,240 events at which Temporal warns
// (and far below its 51,200 limit) before it continues as new. A new run
// costs about as much as a hundred cached shards, so runs are not shorter.
const ShardsPerRun = 400

// longerRunsChange versions runs of ShardsPerRun shards (shardsPerRunV0
// before) whose chains start by trying the cache locally, so runs started
// before it replay as they ran.
const (
	longerRunsChange = "longer-runs"
	shardsPerRunV0   = 100
)

// everyRunLooksUpChange versions every run of a chain beginning with a
// batch of cache lookups, not only its first, so that runs started
// before it replay as they ran.
const everyRunLooksUpChange = "every-run-looks-up"

// continueAsNew is workflow.NewContinueAsNewError, unless the run was
// cancelled after its last activity ended: the server does not carry a
// cancel request over to the next run, which would go on with the rest
// (of a chain's shards, a pack's archives) after `starter cancel` said it
// was cancelled. Versioned (cancelBeforeContinueChange) where it happens.
func continueAsNew(ctx workflow.Context, wf, next any) error {
	if ctx.Err() != nil && workflow.GetVersion(ctx, cancelBeforeContinueChange, workflow.DefaultVersion, 1) == 1 {
		return temporal.NewCanceledError()
	}
	return workflow.NewContinueAsNewError(ctx, wf, next)
}

const cancelBeforeContinueChange = "cancel-before-continue"

// ShardsWorkflow embeds shards [First, End) in a sliding window of Window
// shards, ShardsPerRun per run, continuing as new until the range is done.
func ShardsWorkflow(ctx workflow.Context, in ShardsInput) (ShardsResult, error) {
	ctx = withRetries(ctx, in.RetryFor)
	done := in.Done
	if err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (ShardsResult, error) { return done, nil }); err != nil {
		return done, err
	}
	perRun, optimistic := shardsPerRunV0, false
	if workflow.GetVersion(ctx, longerRunsChange, workflow.DefaultVersion, 1) == 1 {
		perRun, optimistic = ShardsPerRun, true
	}
	stop := min(in.First+perRun, in.End)
	scan := &scanState{cached: in.LastCached}
	if in.K > 0 {
		scan.lookUp = workflow.GetVersion(ctx, localSearchChange, workflow.DefaultVersion, 1) == 1
	} else {
		// A set that is not searched (train, test, E_heldout) is looked
		// up in batches too: sent shard by shard to the embedding queue,
		// a recurring pass's cached shards each cost a round trip there
		// and waited for an embedding worker, which a pass on cached
		// features should not need.
		scan.lookUp = workflow.GetVersion(ctx, cachedSetsChange, workflow.DefaultVersion, 1) == 1
	}
	// A chain's first shards are looked up in the cache too: a recurring
	// pass finds them there, sparing embedding activities' round trips,
	// and a new pool costs a miss per shard of the chain's first run
	// (one per chain before batchChange), a few reads against its
	// embedding.
	if optimistic && in.Done.Shards == 0 {
		scan.cached = true
	} else if optimistic && !scan.cached && workflow.GetVersion(ctx, everyRunLooksUpChange, workflow.DefaultVersion, 1) == 1 {
		// LastCached is the shard that finished last, in a recurring pass
		// with a few new shards more often an embedding than not: a run
		// begun one shard at a time on the embedding queue waited there
		// behind other chains' embeddings. The run's batches go out at
		// once, so a new pool now costs a lookup a shard in every run
		// (25 CPU batches of 16 reads), not only in a chain's first: a
		// few ms a shard against its embedding.
		scan.cached = true
	}
	if err := runShards(ctx, in, stop, scan, done.add); err != nil {
		return done, err
	}
	if stop < in.End {
		next := in
		next.First, next.Done, next.LastCached = stop, done, scan.cached
		return done, continueAsNew(ctx, ShardsWorkflow, next)
	}
	return done, nil
}

// runShards runs shards [in.First, stop) in a sliding window of in.Window,
// handing each one's counts to done as it ends, and returns the first
// failure. A run that looks its shards up in the cache (scan.lookUp) does
// so in batches (runBatched); the rest of this function is how runs
// started before batchChange replay, looking shards up one at a time:
//
// Cached shards run in local activities, which keep the workflow's task
// open while any runs, and the server answers a query (`starter status`)
// only between tasks: a long scan of cached shards would leave its
// progress unanswered to the end. So after queryGap of them the window
// drains and one shard runs as an activity, alone, which lets the task
// end and the queries waiting be answered. (A timer would do it without
// the shard's requests, but the server fires even a 1 ms timer about a
// second later: it cost a 1M pass on file:// a second a drain.)
//
// A cached shard's search is a few requests one after the other and a
// few milliseconds of k-NN: from an object store, latency. So cached
// shards run cachedWidth times the window at once, each taking one unit
// of a semaphore of Window×cachedWidth; a shard that runs as an
// activity (embedding) takes cachedWidth, so at most Window of those run
// at once, as configured. The worker bounds what the searches hold
// (Sessions.hold, knn.Concurrent), however many arrive.
func runShards(ctx workflow.Context, in ShardsInput, stop int, scan *scanState, done func(ShardsResult)) error {
	if scan.lookUp && workflow.GetVersion(ctx, batchChange, workflow.DefaultVersion, 1) == 1 {
		return runBatched(ctx, in, stop, scan, done)
	}
	wide := int64(1)
	if scan.lookUp && workflow.GetVersion(ctx, wideChange, workflow.DefaultVersion, 1) == 1 {
		wide = cachedWidth
	}
	window := int64(max(in.Window, 1)) * wide
	sem := workflow.NewSemaphore(ctx, window)
	wg := workflow.NewWaitGroup(ctx)
	answers := scan.lookUp && workflow.GetVersion(ctx, queryGapChange, workflow.DefaultVersion, 1) == 1
	since, drained := workflow.Now(ctx), false
	var firstErr error
	for i := in.First; i < stop; i++ {
		held := wide
		if scan.lookUp && scan.cached {
			held = 1
		}
		if err := sem.Acquire(ctx, held); err != nil {
			return err // cancelled
		}
		if firstErr != nil {
			sem.Release(held)
			break
		}
		if drained || !scan.cached { // a shard run alone, or an activity, let the task end
			since, drained = workflow.Now(ctx), false
		}
		alone := false
		if answers && scan.cached && workflow.Now(ctx).Sub(since) >= queryGap {
			if err := sem.Acquire(ctx, window-held); err != nil {
				return err // cancelled
			}
			// While the window drained, a shard may have failed, or missed
			// the cache and gone to the activities that let the task end.
			if firstErr != nil {
				sem.Release(window)
				break
			}
			if scan.cached {
				held, alone, drained = window, true, true
			} else {
				sem.Release(window - held)
			}
		}
		wg.Add(1)
		workflow.Go(ctx, func(ctx workflow.Context) {
			defer wg.Done()
			defer func() { sem.Release(held) }()
			// A shard that runs as an activity after all (it missed the
			// cache) takes an activity's share first, giving its unit back
			// while it waits.
			embedding := func() error {
				if held >= wide {
					return nil
				}
				sem.Release(held)
				held = 0
				if err := sem.Acquire(ctx, wide); err != nil {
					return err // cancelled
				}
				held = wide
				return nil
			}
			r, err := shard(ctx, in, i, scan, alone, embedding)
			if err != nil && firstErr == nil {
				firstErr = err
			}
			done(r)
		})
	}
	wg.Wait(ctx)
	return firstErr
}

// runBatched runs shards [in.First, stop) as runShards does, looking up
// cached shards cachedBatch at a time in CachedShards activities on the
// cpu queue rather than one by one in local activities.
//
// Local activities run on the worker that runs the chain, so a recurring
// scan ran on at most shards.chains workers (one, for a pool of up to 1,000
// shards) however many were added. The batches go through the task queue
// instead, all of a run's at once, and each worker takes as many as its
// free slots allow: the scan spreads over every worker polling the cpu
// queue, and a worker that dies loses only its batches, which the server
// retries elsewhere. A batch's round trips cost about what its shards'
// local activities did in the workflow task (`starter bench`,
// orchestration_cached), and the workflow's task ends between batches, so
// queries are answered mid-scan with no shard run alone.
//
// The window bounds embeddings only (Window at a time, as configured): a
// batch waiting in the queue holds nothing, and a worker bounds what its
// searches hold (Sessions.hold, knn.Concurrent). A shard a batch finds
// missing is embedded in the window. A run begins looking up (every run
// does since everyRunLooksUpChange), so its batches all go out at once;
// the branch that embeds shards one by one, in order, until one is found
// cached serves the runs of passes started before, replayed.
func runBatched(ctx workflow.Context, in ShardsInput, stop int, scan *scanState, done func(ShardsResult)) error {
	sem := workflow.NewSemaphore(ctx, int64(max(in.Window, 1)))
	wg := workflow.NewWaitGroup(ctx)
	var firstErr error
	fail := func(err error) {
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	// embed embeds shard i once the window has room; acquired says the
	// caller holds its unit already.
	embed := func(i int, acquired bool) {
		wg.Add(1)
		workflow.Go(ctx, func(ctx workflow.Context) {
			defer wg.Done()
			if !acquired {
				if err := sem.Acquire(ctx, 1); err != nil {
					fail(err) // cancelled
					return
				}
			}
			defer sem.Release(1)
			if firstErr != nil {
				return
			}
			r, err := embedShard(ctx, in, i, scan)
			fail(err)
			done(r)
		})
	}
	for i := in.First; i < stop && firstErr == nil; {
		if !scan.cached {
			// In order, the window's pace: the next shard waits to learn
			// whether this one found the cache again.
			if err := sem.Acquire(ctx, 1); err != nil {
				return err // cancelled
			}
			if firstErr != nil {
				sem.Release(1)
				break
			}
			embed(i, true)
			i++
			continue
		}
		first, end := i, min(i+cachedBatch, stop)
		i = end
		wg.Add(1)
		workflow.Go(ctx, func(ctx workflow.Context) {
			defer wg.Done()
			var a *activities.Activities
			var res activities.CachedShardsResult
			err := workflow.ExecuteActivity(cpuOptions(ctx, in.Heartbeat, in.Timeout), a.CachedShards, activities.CachedShardsInput{
				Run: in.Run, Dataset: in.Dataset, First: first, End: end, Model: in.Model, K: in.K, Scan: in.Scan, Keyed: in.Keyed, Reread: in.Reread,
			}).Get(ctx, &res)
			if err == nil && len(res.Shards) != end-first {
				err = temporal.NewNonRetryableApplicationError(fmt.Sprintf("CachedShards returned %d shards for %d", len(res.Shards), end-first), "BadResult", nil)
			}
			if err != nil {
				fail(err)
				return
			}
			for j, emb := range res.Shards {
				scan.cached = cachedDone(in, emb)
				if scan.cached {
					done(ShardsResult{Shards: 1, Images: emb.Images, Rejects: emb.Rejects, Cached: 1})
					continue
				}
				embed(first+j, false)
			}
		})
	}
	wg.Wait(ctx)
	return firstErr
}

// cachedBatch is how many shards one CachedShards activity looks up, all
// at once: enough that its round trips through the task queue (a few ms
// on the dev server) cost a tenth of the batch's searches, and that a
// worker's two cpu slots keep 32 shards' reads in flight, as many as a
// chain's local searches did, for a store that answers in 50 ms; few
// enough that a run of 400 shards makes 25 batches to spread over the
// workers.
const cachedBatch = 16

// cachedWidth is how many cached shards run at once per shard of the
// window (runShards). From a store that answers in 50 ms, a cached
// shard's three rounds of requests and its write take about 200 ms; on
// two CPUs its search takes 5-10, so a window of 4 shards kept the CPUs
// busy a tenth of the time.
const cachedWidth = 8

// localSearchChange versions the local-activity search of cached shards,
// queryGapChange the shards run alone between them, wideChange the
// cached shards run cachedWidth times the window (runShards), and
// batchChange the cached shards looked up in batches instead
// (runBatched), and cachedSetsChange those of sets without a search
// looked up so too, so runs started before them replay as they ran.
const (
	localSearchChange = "local-cached-search"
	queryGapChange    = "query-gap"
	wideChange        = "wide-cached-window"
	batchChange       = "cached-batches"
	cachedSetsChange  = "cached-sets"
)

// queryGap is how long (in workflow time, which each local activity's
// result advances) cached shards run in local activities before one runs
// as an activity, letting the queries waiting be answered; `starter
// status` waits 5 s for an answer. Each costs a round trip through the cpu
// queue (its worker's own, eagerly, when it has a slot free) and a drained
// window: a few tens of ms, a few hundred from an object store.
const queryGap = 2 * time.Second

// scanState is what a run's shards learn about the pool as they go.
type scanState struct {
	lookUp bool // the run looks shards up in the cache before embedding them
	cached bool // the last shard that finished was cached
}

// shard runs one shard's pipeline: embed on the gpu queue and, for the pool
// (K > 0), the partial top-k, which EmbedShard does itself (a worker that
// predates that leaves it to TopKShard on the cpu queue).
//
// In runs started before batchChange (runShards): a recurring pass finds
// most pool shards cached. Once one has been, the next shards are first
// tried in a local activity (EmbedShard with CachedOnly, on this
// workflow's worker): a cached shard is searched there at the cost of one
// marker in the history instead of an activity task's round trips, the
// orchestration that dominated a cached pass. A set the pass runs itself
// (a small one, or a pool of up to inlinePoolShards) starts the same way,
// its first shard tried so. A shard that is not cached falls back to the
// activities above.
//
// alone tries the cache in an activity on the cpu queue instead, which
// lets the workflow's task end (runShards).
//
// embedding is called before the shard is embedded.
func shard(ctx workflow.Context, in ShardsInput, i int, scan *scanState, alone bool, embedding func() error) (ShardsResult, error) {
	var a *activities.Activities
	var emb activities.EmbedShardResult
	if scan.lookUp && scan.cached {
		cachedOnly := activities.EmbedShardInput{Run: in.Run, Dataset: in.Dataset, Shard: i, Model: in.Model, K: in.K, CachedOnly: true, Scan: in.partialScan(), Reread: in.Reread}
		var f workflow.Future
		if alone {
			f = workflow.ExecuteActivity(cpuOptions(ctx, in.Heartbeat, in.Timeout), a.EmbedShard, cachedOnly)
		} else {
			f = workflow.ExecuteLocalActivity(localOptions(ctx, in.Timeout), a.EmbedShard, cachedOnly)
		}
		if err := f.Get(ctx, &emb); err != nil {
			return ShardsResult{}, err
		}
		if cachedDone(in, emb) {
			return ShardsResult{Shards: 1, Images: emb.Images, Rejects: emb.Rejects, Cached: 1}, nil
		}
		scan.cached = false
	}
	if err := embedding(); err != nil {
		return ShardsResult{}, err
	}
	return embedShard(ctx, in, i, scan)
}

// cachedDone says a cache lookup finished its shard: found, and searched
// if it is the pool's.
func cachedDone(in ShardsInput, emb activities.EmbedShardResult) bool {
	return emb.Cached && (in.K == 0 || emb.TopK != nil)
}

// embedShard embeds shard i on the gpu queue (EmbedShard finds it in the
// cache if it is there after all) and, for the pool, searches it.
func embedShard(ctx workflow.Context, in ShardsInput, i int, scan *scanState) (ShardsResult, error) {
	var a *activities.Activities
	var emb activities.EmbedShardResult
	err := workflow.ExecuteActivity(gpuOptions(ctx, in.Heartbeat, in.Timeout), a.EmbedShard, activities.EmbedShardInput{
		Run: in.Run, Dataset: in.Dataset, Shard: i, Model: in.Model, BatchSize: in.BatchSize, PartSize: in.PartSize, K: in.K,
		Scan: in.partialScan(), Reread: in.Reread,
	}).Get(ctx, &emb)
	if err != nil {
		return ShardsResult{}, err
	}
	scan.cached = emb.Cached
	r := ShardsResult{Shards: 1, Images: emb.Images, Rejects: emb.Rejects, Resumed: emb.ResumedFrom}
	if emb.Cached {
		r.Cached = 1
	}
	if in.K > 0 && emb.TopK == nil { // else EmbedShard searched the shard already
		err = workflow.ExecuteActivity(cpuOptions(ctx, in.Heartbeat, in.Timeout), a.TopKShard, activities.TopKShardInput{
			Run: in.Run, Shard: i, Model: in.Model, K: in.K, Scan: in.partialScan(),
		}).Get(ctx, nil)
	}
	return r, err
}

func activityOptions(ctx workflow.Context, queue string, heartbeat, timeout time.Duration) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           queue,
		StartToCloseTimeout: timeout,
		HeartbeatTimeout:    heartbeat,
		RetryPolicy:         stepRetries(ctx),
	})
}

// retryPolicy is a step's retries where no timeouts.retry_for says
// otherwise (a pack; a chain of a pass started before it did): ten tries,
// about four minutes.
var retryPolicy = &temporal.RetryPolicy{
	InitialInterval:    time.Second,
	BackoffCoefficient: 2,
	MaximumInterval:    time.Minute,
	MaximumAttempts:    10,
}

// withRetries has the steps run from ctx tried again for about d
// (timeouts.retry_for) before they fail: the waits between tries, 1 s
// doubling to a minute, add up to d. Not a ScheduleToClose timeout, which
// would also end a step waiting for a worker to come.
func withRetries(ctx workflow.Context, d time.Duration) workflow.Context {
	if d <= 0 {
		return ctx
	}
	p := *retryPolicy
	p.MaximumAttempts = 1
	wait := p.InitialInterval
	for total := time.Duration(0); total < d; p.MaximumAttempts++ {
		total += wait
		wait = min(time.Duration(float64(wait)*p.BackoffCoefficient), p.MaximumInterval)
	}
	return workflow.WithRetryPolicy(ctx, p)
}

// localOptions runs local activities from ctx with the steps' retries
// and a time limit a try: their tries and the waits between them bound
// by the policy alone, where the SDK would end them once the first try's
// time limit had passed since it began.
func localOptions(ctx workflow.Context, timeout time.Duration) workflow.Context {
	p := stepRetries(ctx)
	return workflow.WithLocalActivityOptions(ctx, workflow.LocalActivityOptions{
		StartToCloseTimeout:    timeout,
		ScheduleToCloseTimeout: time.Duration(max(p.MaximumAttempts, 1)) * (timeout + p.MaximumInterval),
		RetryPolicy:            p,
	})
}

// stepRetries is the retry policy of the steps run from ctx.
func stepRetries(ctx workflow.Context) *temporal.RetryPolicy {
	if p := workflow.GetActivityOptions(ctx).RetryPolicy; p != nil {
		return p
	}
	return retryPolicy
}

func gpuOptions(ctx workflow.Context, heartbeat, timeout time.Duration) workflow.Context {
	return activityOptions(ctx, GPUQueue, heartbeat, timeout)
}

func cpuOptions(ctx workflow.Context, heartbeat, timeout time.Duration) workflow.Context {
	return activityOptions(ctx, CPUQueue, heartbeat, timeout)
}
