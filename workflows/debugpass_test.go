package workflows

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/suite"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"dcd/activities"
	"dcd/internal/preprocess"
	"dcd/schemas"
)

type UnitTestSuite struct {
	suite.Suite
	testsuite.WorkflowTestSuite
}

func TestUnitTestSuite(t *testing.T) {
	s := new(UnitTestSuite)
	// The test server logs every activity; 20,000 of them drown the result.
	s.SetLogger(log.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	suite.Run(t, s)
}

func validConfig() schemas.Config {
	return schemas.Config{
		Name:    "unit",
		Classes: []string{"a", "b"},
		Target: schemas.Model{Path: "m.onnx", Features: "f", Logits: "l",
			Preprocess: preprocess.Spec{Channels: 1, Height: 28, Width: 28}},
		Data: schemas.Data{
			Train: schemas.Dataset{Prefix: "train/"}, Test: schemas.Dataset{Prefix: "test/"},
			ErrorSample: schemas.Dataset{Prefix: "s/"}, ErrorHeldout: schemas.Dataset{Prefix: "h/"},
			Pool: schemas.Dataset{Manifest: "pool.csv"},
		},
	}.WithDefaults()
}

// shardCounter records which run of which workflow embedded each shard,
// and how many pool chains embedded at once.
type shardCounter struct {
	mu        sync.Mutex
	seen      map[string]map[int]int // dataset → shard → times
	perRun    map[string]int         // run id → shards embedded in that run
	embedding map[string]int         // pool chain → shards it is embedding
	most      int                    // pool chains embedding at once, at most
}

func (c *shardCounter) embed(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
	if in.CachedOnly {
		return activities.EmbedShardResult{}, nil // a look in the empty cache: no work
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen[in.Dataset] == nil {
		c.seen[in.Dataset] = map[int]int{}
	}
	c.seen[in.Dataset][in.Shard]++
	c.perRun[activity.GetInfo(ctx).WorkflowExecution.RunID]++
	if in.Dataset != activities.Pool {
		return activities.EmbedShardResult{Images: 10}, nil
	}
	chain := activity.GetInfo(ctx).WorkflowExecution.ID
	c.embedding[chain]++
	c.most = max(c.most, len(c.embedding))
	c.mu.Unlock()
	time.Sleep(time.Millisecond) // long enough for other chains' to overlap
	c.mu.Lock()
	if c.embedding[chain]--; c.embedding[chain] == 0 {
		delete(c.embedding, chain)
	}
	return activities.EmbedShardResult{Images: 10}, nil
}

// mockPlans mocks a pass's checks of its sets apart and its plans: a pool
// of poolShards shards, the other sets of one, each of ten images.
func mockPlans(env *testsuite.TestWorkflowEnvironment, poolShards int) {
	var a *activities.Activities
	env.OnActivity(a.CheckApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.CheckTrainApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Plan, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.PlanInput) (activities.PlanResult, error) {
			if in.Name == activities.Pool {
				return activities.PlanResult{Shards: poolShards, Images: poolShards * 10}, nil
			}
			return activities.PlanResult{Shards: 1, Images: 10}, nil
		})
}

// mockAfterScan mocks a pass's steps from its queries on, each a success.
func mockAfterScan(env *testsuite.TestWorkflowEnvironment) {
	var a *activities.Activities
	env.OnActivity(a.Queries, mock.Anything, mock.Anything).Return(activities.QueriesResult{Queries: 20}, nil)
	env.OnActivity(a.MergeTopK, mock.Anything, mock.Anything).Return(activities.MergeTopKResult{}, nil)
	env.OnActivity(a.SelectDebugTrain, mock.Anything, mock.Anything).Return(activities.SelectResult{Manifest: "m.csv", Size: 50}, nil)
	env.OnActivity(a.GuardSelection, mock.Anything, mock.Anything).Return(activities.SelectResult{Manifest: "g.csv", Size: 48}, nil)
	env.OnActivity(a.GatherSelection, mock.Anything, mock.Anything).Return(activities.GatherResult{}, nil)
	env.OnActivity(a.SelectRandom, mock.Anything, mock.Anything).Return(activities.SelectResult{Manifest: "r.csv", Size: 48}, nil)
	env.OnActivity(a.Retrain, mock.Anything, mock.Anything).Return(activities.RetrainResult{}, nil)
	env.OnActivity(a.Evaluate, mock.Anything, mock.Anything).Return(activities.EvaluateResult{}, nil)
	env.OnActivity(a.WriteEval, mock.Anything, mock.Anything).Return("eval.json", nil)
	env.OnActivity(a.Report, mock.Anything, mock.Anything).Return(activities.ReportResult{}, nil)
}

// noneCached is a CachedShards over an empty cache: it finds no shard.
func noneCached(_ context.Context, in activities.CachedShardsInput) (activities.CachedShardsResult, error) {
	return activities.CachedShardsResult{Shards: make([]activities.EmbedShardResult, in.End-in.First)}, nil
}

// A pool of 10,000 shards is planned and scanned through child chains that
// continue as new, so no single run's history holds more than ShardsPerRun
// shards, and every shard is embedded and searched exactly once.
func (s *UnitTestSuite) TestTenThousandShardsKeepHistoriesBounded() {
	env := s.NewTestWorkflowEnvironment()
	// The SDK takes a workflow task running over 1 s for a deadlock; a
	// chain's task over hundreds of shards can take that on a loaded
	// machine (it failed a CI run beside fuzzers) without one.
	env.SetWorkerOptions(worker.Options{DeadlockDetectionTimeout: time.Minute})
	env.RegisterWorkflow(ShardsWorkflow)
	var a *activities.Activities
	const poolShards = 10000
	c := &shardCounter{seen: map[string]map[int]int{}, perRun: map[string]int{}, embedding: map[string]int{}}
	env.OnActivity(a.CheckModels, mock.Anything, mock.Anything).Return(activities.CheckModelsResult{}, nil)
	mockPlans(env, poolShards)
	env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(c.embed)
	env.OnActivity(a.CachedShards, mock.Anything, mock.Anything).Return(noneCached)
	var topk sync.Map
	env.OnActivity(a.TopKShard, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.TopKShardInput) (activities.TopKShardResult, error) {
			if _, dup := topk.LoadOrStore(in.Shard, true); dup {
				return activities.TopKShardResult{}, errors.New("shard searched twice")
			}
			return activities.TopKShardResult{}, nil
		})
	mockAfterScan(env)

	cfg := validConfig()
	cfg.Shards.Chains = 3
	env.ExecuteWorkflow(DebugPass, PassInput{Config: cfg})
	s.True(env.IsWorkflowCompleted())
	s.NoError(env.GetWorkflowError())

	// Ten chains, shards.chains at once.
	s.Equal(3, c.most, "pool chains embedding at once")
	s.Len(c.seen[activities.Pool], poolShards)
	for i := 0; i < poolShards; i++ {
		s.Equal(1, c.seen[activities.Pool][i], "pool shard %d", i)
	}
	n := 0
	topk.Range(func(any, any) bool { n++; return true })
	s.Equal(poolShards, n)
	for run, shards := range c.perRun {
		s.LessOrEqual(shards, ShardsPerRun, "run %s", run)
	}
	// 10,000 pool shards in chains of ShardsPerRun, plus the small datasets.
	s.GreaterOrEqual(len(c.perRun), poolShards/ShardsPerRun)

	var p Progress
	v, err := env.QueryWorkflow(ProgressQuery)
	s.NoError(err)
	s.NoError(v.Get(&p))
	s.Equal("done", p.Phase)
	s.Equal(p.ShardsTotal, p.ShardsDone)
}

// A step that fails on every try (a store down) is tried again for about
// timeouts.retry_for before it fails the pass: the waits between tries,
// 1 s doubling to a minute, add up to it. The pool's chains, children of
// the pass, retry as long, and so do local activities (checking the
// models), whose tries outlast a try's time limit.
func (s *UnitTestSuite) TestRetryForBoundsRetries() {
	const checks = "CheckModels"
	for _, c := range []struct {
		retryFor time.Duration
		failing  string // the dataset whose first shard fails, or checks
		tries    int
	}{
		{time.Minute, activities.ErrorSample, 7},       // 1+2+4+8+16+32 s
		{20 * time.Minute, activities.ErrorSample, 26}, // 63 s, then 19 minutes
		{0, activities.ErrorSample, 26},                // the default
		{time.Minute, activities.Pool, 7},              // in a chain of the pass
		{20 * time.Minute, checks, 26},                 // a local activity, timeouts.activity 5m
	} {
		env := s.NewTestWorkflowEnvironment()
		env.RegisterWorkflow(ShardsWorkflow)
		var a *activities.Activities
		var mu sync.Mutex
		tries := 0
		env.OnActivity(a.CheckModels, mock.Anything, mock.Anything).Return(func(context.Context, activities.CheckModelsInput) (activities.CheckModelsResult, error) {
			if c.failing != checks {
				return activities.CheckModelsResult{}, nil
			}
			tries++
			return activities.CheckModelsResult{}, errors.New("store: connection refused")
		})
		mockPlans(env, 500)
		env.OnActivity(a.CachedShards, mock.Anything, mock.Anything).Return(noneCached)
		env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
			if in.CachedOnly {
				return activities.EmbedShardResult{}, nil
			}
			if in.Dataset != c.failing || in.Shard != 0 {
				return activities.EmbedShardResult{Images: 10}, nil
			}
			mu.Lock()
			defer mu.Unlock()
			tries++
			return activities.EmbedShardResult{}, errors.New("store: connection refused")
		})
		env.OnActivity(a.TopKShard, mock.Anything, mock.Anything).Return(activities.TopKShardResult{}, nil)
		mockAfterScan(env)
		cfg := validConfig()
		cfg.Timeouts.RetryFor = schemas.Duration(c.retryFor)
		cfg.Timeouts.Activity = schemas.Duration(5 * time.Minute)
		env.ExecuteWorkflow(DebugPass, PassInput{Config: cfg})
		s.True(env.IsWorkflowCompleted())
		err := env.GetWorkflowError()
		s.ErrorContains(err, "connection refused", "retry_for %s", c.retryFor)
		s.Equal(c.tries, tries, "retry_for %s: %s's tries", c.retryFor, c.failing)
	}
}

// A pass started with Reread asks every lookup and embedding of every set
// to read its cached unreadable images again: the pool's in its chains
// (a pool too large to scan in the pass itself) and the sets' in the pass.
func (s *UnitTestSuite) TestRereadReachesEveryShard() {
	env := s.NewTestWorkflowEnvironment()
	env.SetWorkerOptions(worker.Options{DeadlockDetectionTimeout: time.Minute})
	env.RegisterWorkflow(ShardsWorkflow)
	var a *activities.Activities
	var mu sync.Mutex
	seen := map[string]int{} // dataset → lookups and embeddings
	var without []string
	note := func(ds string, reread bool) {
		mu.Lock()
		defer mu.Unlock()
		seen[ds]++
		if !reread {
			without = append(without, ds)
		}
	}
	env.OnActivity(a.CheckModels, mock.Anything, mock.Anything).Return(activities.CheckModelsResult{}, nil)
	mockPlans(env, 500)
	env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		note(in.Dataset, in.Reread)
		if in.CachedOnly {
			return activities.EmbedShardResult{}, nil
		}
		return activities.EmbedShardResult{Images: 10}, nil
	})
	env.OnActivity(a.CachedShards, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.CachedShardsInput) (activities.CachedShardsResult, error) {
		note(in.Dataset, in.Reread)
		return noneCached(ctx, in)
	})
	env.OnActivity(a.TopKShard, mock.Anything, mock.Anything).Return(activities.TopKShardResult{}, nil)
	mockAfterScan(env)

	env.ExecuteWorkflow(DebugPass, PassInput{Config: validConfig(), Reread: true})
	s.True(env.IsWorkflowCompleted())
	s.NoError(env.GetWorkflowError())
	for _, ds := range []string{activities.ErrorSample, activities.ErrorHeldout, activities.Test, activities.Train, activities.Pool} {
		s.Positive(seen[ds], "%s looked up or embedded", ds)
	}
	s.Empty(without, "sets looked up or embedded without Reread")
}

// A bad field fails the pass before any activity runs, naming the field.
func (s *UnitTestSuite) TestBadConfigFailsAtValidation() {
	env := s.NewTestWorkflowEnvironment()
	cfg := validConfig()
	cfg.Selection.K = -3
	env.ExecuteWorkflow(DebugPass, PassInput{Config: cfg})
	err := env.GetWorkflowError()
	s.Error(err)
	var appErr *temporal.ApplicationError
	s.True(errors.As(err, &appErr))
	s.True(appErr.NonRetryable())
	s.Contains(err.Error(), "selection.k")
}

// poolFailsAfter mocks a pass's steps up to the scan: every set plans at
// once but the pool, whose listing fails once after is closed (or, if it
// never is, with another error after 10 s).
func poolFailsAfter(env *testsuite.TestWorkflowEnvironment, after <-chan struct{}) {
	var a *activities.Activities
	env.OnActivity(a.CheckModels, mock.Anything, mock.Anything).Return(activities.CheckModelsResult{}, nil)
	env.OnActivity(a.CheckApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.CheckTrainApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Plan, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PlanInput) (activities.PlanResult, error) {
		if in.Name == activities.Pool {
			select {
			case <-after:
				return activities.PlanResult{}, temporal.NewNonRetryableApplicationError("data.pool: listing failed", "InvalidInput", nil)
			case <-time.After(10 * time.Second):
				return activities.PlanResult{}, errors.New("the pool's plan waited for what comes after it")
			}
		}
		return activities.PlanResult{Shards: 1, Images: 10}, nil
	})
	env.OnActivity(a.CachedShards, mock.Anything, mock.Anything).Return(noneCached)
}

// The pool's and train's plans go on beside the checks and the queries,
// which need only E_sample, E_heldout and test: the queries are gathered
// while the pool is still being listed, and the pool's failure after them
// still fails the pass, named.
func (s *UnitTestSuite) TestPoolPlanGoesOnBesideTheQueries() {
	env := s.NewTestWorkflowEnvironment()
	var a *activities.Activities
	queried := make(chan struct{})
	poolFailsAfter(env, queried)
	env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(activities.EmbedShardResult{Images: 10}, nil)
	env.OnActivity(a.Queries, mock.Anything, mock.Anything).Return(func(context.Context, activities.QueriesInput) (activities.QueriesResult, error) {
		close(queried)
		return activities.QueriesResult{Queries: 10}, nil
	})
	env.ExecuteWorkflow(DebugPass, PassInput{Config: validConfig()})
	s.ErrorContains(env.GetWorkflowError(), "data.pool: listing failed")
}

// A pool whose planning fails while E_sample is embedded ends the pass
// then, not when the embedding is done.
func (s *UnitTestSuite) TestPoolPlanFailsThePassWhileQueriesEmbed() {
	env := s.NewTestWorkflowEnvironment()
	var a *activities.Activities
	release := make(chan struct{})
	defer close(release)
	embedding := make(chan struct{})
	poolFailsAfter(env, embedding)
	var once sync.Once
	env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(func(context.Context, activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		once.Do(func() { close(embedding) })
		<-release // E_sample's embedding never ends
		return activities.EmbedShardResult{}, nil
	})
	env.ExecuteWorkflow(DebugPass, PassInput{Config: validConfig()})
	s.ErrorContains(env.GetWorkflowError(), "data.pool: listing failed")
}

// A dataset whose planning fails ends the pass at once, though the pool's
// listing (here, one that never ends) is still running.
func (s *UnitTestSuite) TestFailedPlanEndsThePassAtOnce() {
	env := s.NewTestWorkflowEnvironment()
	var a *activities.Activities
	release := make(chan struct{})
	defer close(release)
	env.OnActivity(a.CheckModels, mock.Anything, mock.Anything).Return(activities.CheckModelsResult{}, nil)
	env.OnActivity(a.Plan, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PlanInput) (activities.PlanResult, error) {
		switch in.Name {
		case activities.Pool:
			<-release
		case activities.Test:
			return activities.PlanResult{}, temporal.NewNonRetryableApplicationError("data.test: no such prefix", "InvalidInput", nil)
		}
		return activities.PlanResult{Shards: 1, Images: 10}, nil
	})
	env.ExecuteWorkflow(DebugPass, PassInput{Config: validConfig()}) // waiting for the pool would time out
	s.ErrorContains(env.GetWorkflowError(), "data.test: no such prefix")
}

// A chain that fails stops its dataset's other chains: the pass fails
// then, with its error, not after their thousands of shards.
func (s *UnitTestSuite) TestFailedChainStopsTheOthers() {
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(ShardsWorkflow)
	env.SetTestTimeout(20 * time.Second) // a pass that waits on the others' shards would time out
	var a *activities.Activities
	env.OnActivity(a.CheckModels, mock.Anything, mock.Anything).Return(activities.CheckModelsResult{}, nil)
	env.OnActivity(a.CheckApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.CheckTrainApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Plan, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PlanInput) (activities.PlanResult, error) {
		if in.Name == activities.Pool {
			return activities.PlanResult{Shards: 3 * ChildShards, Images: 30 * ChildShards}, nil
		}
		return activities.PlanResult{Shards: 1, Images: 10}, nil
	})
	env.OnActivity(a.CachedShards, mock.Anything, mock.Anything).Return(noneCached)
	env.OnActivity(a.Queries, mock.Anything, mock.Anything).Return(activities.QueriesResult{Queries: 20}, nil)
	env.OnActivity(a.TopKShard, mock.Anything, mock.Anything).Return(activities.TopKShardResult{}, nil)
	var mu sync.Mutex
	embedded := 0
	env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		switch {
		case in.CachedOnly:
			return activities.EmbedShardResult{}, nil
		case in.Dataset != activities.Pool:
			return activities.EmbedShardResult{Images: 10}, nil
		case in.Shard == 0:
			return activities.EmbedShardResult{}, temporal.NewNonRetryableApplicationError("pool shard 0: damaged", "InvalidShard", nil)
		case in.Shard < ChildShards: // the failing chain's own
			return activities.EmbedShardResult{Images: 10}, nil
		}
		mu.Lock()
		embedded++
		mu.Unlock()
		for range 300 { // the other chains' shards take until they are cancelled
			activity.RecordHeartbeat(ctx)
			select {
			case <-ctx.Done():
				return activities.EmbedShardResult{}, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		return activities.EmbedShardResult{Images: 10}, nil
	})
	cfg := validConfig()
	cfg.Shards.Chains = 3
	env.ExecuteWorkflow(DebugPass, PassInput{Config: cfg})
	s.True(env.IsWorkflowCompleted())
	s.ErrorContains(env.GetWorkflowError(), "pool shard 0: damaged")
	mu.Lock()
	defer mu.Unlock()
	s.Less(embedded, 3*cfg.Shards.Window, "the other chains went on past their first window")
}

// A method that fails fails the pass when it does: dcd's guard, here,
// while all_pool, before it in the list, is still retraining. So does one
// cancelled alone (its chain, from the UI), the pass itself not cancelled.
func (s *UnitTestSuite) TestFailedMethodEndsThePassAtOnce() {
	for _, failure := range []error{
		temporal.NewNonRetryableApplicationError("dcd: guard failed", "InvalidInput", nil),
		temporal.NewCanceledError("dcd: guard cancelled"),
	} {
		s.Run(failure.Error(), func() { s.failedMethodEndsThePass(failure) })
	}
}

func (s *UnitTestSuite) failedMethodEndsThePass(failure error) {
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(ShardsWorkflow)
	env.SetTestTimeout(20 * time.Second) // a pass that waits on all_pool would time out
	var a *activities.Activities
	env.OnActivity(a.CheckModels, mock.Anything, mock.Anything).Return(activities.CheckModelsResult{}, nil)
	env.OnActivity(a.CheckApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.CheckTrainApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Plan, mock.Anything, mock.Anything).Return(activities.PlanResult{Shards: 1, Images: 10}, nil)
	env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(activities.EmbedShardResult{Images: 10}, nil)
	env.OnActivity(a.CachedShards, mock.Anything, mock.Anything).Return(noneCached)
	env.OnActivity(a.TopKShard, mock.Anything, mock.Anything).Return(activities.TopKShardResult{}, nil)
	env.OnActivity(a.Queries, mock.Anything, mock.Anything).Return(activities.QueriesResult{Queries: 20}, nil)
	env.OnActivity(a.MergeTopK, mock.Anything, mock.Anything).Return(activities.MergeTopKResult{}, nil)
	env.OnActivity(a.SelectDebugTrain, mock.Anything, mock.Anything).Return(activities.SelectResult{Manifest: "m.csv", Size: 50}, nil)
	env.OnActivity(a.GatherSelection, mock.Anything, mock.Anything).Return(activities.GatherResult{}, nil)
	env.OnActivity(a.GuardSelection, mock.Anything, mock.Anything).Return(func(context.Context, activities.GuardInput) (activities.SelectResult, error) {
		time.Sleep(300 * time.Millisecond) // none's evaluation ends first
		return activities.SelectResult{}, failure
	})
	env.OnActivity(a.Retrain, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.RetrainInput) (activities.RetrainResult, error) {
		for range 300 { // all_pool's retraining takes until it is abandoned
			activity.RecordHeartbeat(ctx)
			select {
			case <-ctx.Done():
				return activities.RetrainResult{}, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		return activities.RetrainResult{}, nil
	})
	env.OnActivity(a.Evaluate, mock.Anything, mock.Anything).Return(activities.EvaluateResult{TestImages: 10}, nil)
	var written []activities.Eval
	env.OnActivity(a.WriteEval, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.WriteEvalInput) (string, error) {
		written = append(written, in.Eval)
		return "eval.json", nil
	})
	cfg := validConfig()
	cfg.Compare = []string{schemas.MethodNone, schemas.MethodAllPool, schemas.MethodDCD}
	env.ExecuteWorkflow(DebugPass, PassInput{Config: cfg})
	s.True(env.IsWorkflowCompleted())
	err := env.GetWorkflowError()
	s.Require().Error(err)
	s.NotContains(err.Error(), "deadline", "the pass waited on all_pool")
	// Failed, not cancelled: the pass was not (a cancellation in the
	// error's chain would close it as cancelled, its message lost).
	var cancelled *temporal.CanceledError
	s.False(errors.As(err, &cancelled), "the pass closes as cancelled: %v", err)
	s.Contains(err.Error(), failure.Error())
	// What finished before the failure is kept: none's row, dcd named as
	// failed, all_pool (stopped) in neither. Not for a step cancelled.
	if temporal.IsCanceledError(failure) {
		s.Empty(written, "eval.json written for a step cancelled")
		return
	}
	// The step's activity names its method, for the starter's lines.
	var step *temporal.ActivityError
	if s.True(errors.As(err, &step)) {
		s.Equal(schemas.MethodDCD, StepMethod(step.ActivityID()))
	}
	s.Require().Len(written, 1, "eval.json of the finished methods")
	ev := written[0]
	s.True(ev.Incomplete)
	s.Equal([]string{schemas.MethodDCD}, ev.Failed)
	s.Require().Len(ev.Methods, 1)
	s.Equal(schemas.MethodNone, ev.Methods[0].Method)
	s.Equal(10, ev.TestImages)
}

// While the pass waits on its sets' embeddings, its phase names what it
// waits on: the pool's scan, then the sets still embedding once it ends,
// until the steps after take over.
func (s *UnitTestSuite) TestPhaseFollowsTheSetsEmbedding() {
	env := s.NewTestWorkflowEnvironment()
	phases := func(ctx workflow.Context) ([]string, error) {
		p := &Progress{Phase: "scan pool"}
		var sets []setFuture
		var settle []workflow.Settable
		for _, ds := range []string{activities.Pool, activities.Train, activities.Test, activities.ErrorHeldout} {
			f, set := workflow.NewFuture(ctx)
			sets, settle = append(sets, setFuture{ds, f}), append(settle, set)
		}
		stop := p.phaseOf(ctx, sets)
		var seen []string
		end := func(i int) error {
			settle[i].Set(nil, nil)
			err := workflow.Sleep(ctx, time.Second) // the waiters run
			seen = append(seen, p.Phase)
			return err
		}
		for _, i := range []int{1, 0} { // train, then the pool
			if err := end(i); err != nil {
				return nil, err
			}
		}
		stop()
		p.Phase = "select"
		err := end(3) // E_heldout, after the wait (a failed set ended it)
		return seen, err
	}
	env.RegisterWorkflowWithOptions(phases, workflow.RegisterOptions{Name: "phases"})
	env.ExecuteWorkflow("phases")
	s.NoError(env.GetWorkflowError())
	var seen []string
	s.NoError(env.GetWorkflowResult(&seen))
	s.Equal([]string{"scan pool", "embed test, error_heldout", "select"}, seen)
}
