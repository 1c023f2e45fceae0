// Package workflows holds the deterministic orchestration of a debug pass:
// DebugPass, which reads top to bottom as the pass's DAG, and ShardsWorkflow,
// its child that fans out over shards; PassSchedule, the schedule that
// starts passes; and PackWorkflow, which copies a dataset into WebDataset
// archives.
//
// Workflows pass only keys and counts; every byte of data moves between
// activities through blob storage.
package workflows

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"dcd/activities"
	"dcd/schemas"
)

// Task queues. Embedding goes to the gpu queue, external trainers to
// TrainQueue, everything else (workflows included) to the cpu queue; one
// worker may poll them all.
const (
	CPUQueue = "dcd-cpu"
	GPUQueue = "dcd-gpu"
)

// ProgressQuery answers with a pass's Progress (on DebugPass) or a
// ShardsResult (on its children).
const ProgressQuery = "progress"

// ChildShards is how many shards one child chain handles; the parent's
// history grows by a few events per child, so a pool of 10^6 shards costs it
// about 1,000 children.
const ChildShards = 1000

// PassInput starts a pass.
type PassInput struct {
	Config schemas.Config
	// Reread reads again the images that cached shards of any set, the
	// pool's and train's too, recorded as unreadable (gone, forbidden),
	// and embeds again a shard one of which reads now: after access to
	// them was fixed. Without it only E_sample's, test's and E_heldout's
	// are (activities.EmbedShardInput.Reread).
	Reread bool `json:",omitempty"`
}

// PassResult is what a finished pass returns; the same numbers are in
// eval.json.
type PassResult struct {
	RunID string
	// Eval is eval.json's results; of more than resultPerClassEntries
	// per-class accuracies (classes times methods), without them, which
	// eval.json, at EvalKey, holds.
	Eval       activities.Eval
	EvalKey    string
	ReportKey  string
	RejectsKey string
	// DebugTrain is the debug-train set of the reference dcd method
	// (schemas.Config.ReferenceDCD).
	DebugTrain activities.SelectResult
	Rejects    int // the pool's images that could not be read or decoded
	// SetRejects counts those of train, test and E_heldout, by dataset,
	// where there are any: left out of retraining or evaluation.
	SetRejects map[string]int `json:",omitempty"`
	// Shards counts the shards of every dataset; CachedShards those whose
	// features were already in the cache, or were gathered from it (a
	// selection's shards, made of pool rows the scan embedded).
	Shards       int
	CachedShards int
}

// Progress is a pass's state, for `starter status`. Running lists the child
// workflows at work, whose own progress query adds their shards in flight.
type Progress struct {
	Phase        string
	Started      time.Time
	ShardsTotal  int
	ShardsDone   int
	Images       int
	Rejects      int
	CachedShards int
	Running      []string
	// Again lists those of Running that embed a dataset again under
	// another tag (all_pool's pool with the target, an external trainer's
	// model's test set): their rejects are the first embedding's, counted.
	Again []string `json:",omitempty"`
	// Methods is each compared method's stage once the comparison runs:
	// select, embed, guard, retrain, train, evaluate, then done, failed
	// or cancelled.
	Methods map[string]string `json:",omitempty"`
}

// scanName names this pass's scan, under which its batches write range
// partials (activities.TopKRangeKey): the execution's run ID, unique to
// it, recorded as a side effect so that a reset replays the same name.
// Passes started before rangesChange get none, and write none.
func scanName(ctx workflow.Context) string {
	if workflow.GetVersion(ctx, rangesChange, workflow.DefaultVersion, 1) != 1 {
		return ""
	}
	id := workflow.GetInfo(ctx).WorkflowExecution.RunID
	var name string
	if err := workflow.SideEffect(ctx, func(workflow.Context) any { return id }).Get(&name); err != nil {
		return "" // unreachable: a string encodes; per-shard partials then
	}
	return name
}

// nameScan names the pass's scan (scanName). Since scanAfterPlanChange
// it is named as the scan starts, the pool planned and the queries
// embedded: a pass reset in Temporal to a point before its pool's plan
// completed plans the pool again, maybe from a listing that changed, into
// other shards, so its scan must not take the partials of the execution
// reset (their ranges of shards planned otherwise) for its own. A reset
// to a point after the naming replays both, and the partials are of the
// same shards.
func (s *shardRunner) nameScan(ctx workflow.Context) {
	s.scan = scanName(ctx)
	s.keyed = s.scan != "" && workflow.GetVersion(ctx, keyedPartialsChange, workflow.DefaultVersion, 1) == 1
}

// scanAfterPlanChange versions naming the scan after the pool's plan
// (nameScan), so that passes started before replay as they ran.
const scanAfterPlanChange = "scan-after-plan"

// rangesChange versions the scan's name (scanName), and
// keyedPartialsChange writing each shard's own partial under it too, so
// that a straggler of an earlier pass under the same ID cannot leave its
// partial where this pass reads one: passes started before either replay
// as they ran.
const (
	rangesChange        = "range-partials"
	keyedPartialsChange = "keyed-partials"
)

// trainApartChange versions the check that train shares no image with
// test and E_heldout, which would measure images trained on.
const trainApartChange = "train-apart"

// apartChange versions the check that E_sample, E_heldout and test share
// no image, so passes started before it replay as they ran.
const apartChange = "apart-sets"

// dropScanChange versions deleting the scan's partials once the pass has
// reported, so that passes started before replay as they ran.
const dropScanChange = "drop-scan"

// passConfig is the pass's config with its defaults, and why it is
// invalid, as the worker that started the pass saw them: recorded in the
// history, so that newer workers, whose defaults or checks may differ (a
// method added to the default compare list, a bound tightened), go on with
// the same config rather than replay a pass that no longer matches its
// history. Passes started before configOnceChange work it out each time.
func passConfig(ctx workflow.Context, in schemas.Config) (schemas.Config, error) {
	if workflow.GetVersion(ctx, configOnceChange, workflow.DefaultVersion, 1) != 1 {
		cfg := in.WithDefaults()
		return cfg, cfg.ValidateAsStarted()
	}
	type verdict struct {
		Config  schemas.Config
		Invalid string
	}
	var v verdict
	err := workflow.SideEffect(ctx, func(workflow.Context) any {
		v := verdict{Config: in.WithDefaults()}
		if err := v.Config.Validate(); err != nil {
			v.Invalid = err.Error()
		}
		return v
	}).Get(&v)
	if err != nil {
		return schemas.Config{}, err
	}
	if v.Invalid != "" {
		return v.Config, errors.New(v.Invalid)
	}
	return v.Config, nil
}

// configOnceChange versions recording the pass's config (passConfig).
const configOnceChange = "config-once"

// DebugPass runs one data-centric debugging pass.
func DebugPass(ctx workflow.Context, in PassInput) (PassResult, error) {
	res, err := debugPass(ctx, in)
	if err != nil && ctx.Err() == nil && temporal.IsCanceledError(err) &&
		workflow.GetVersion(ctx, cancelledAloneChange, workflow.DefaultVersion, 1) == 1 {
		// A chain or method cancelled alone (from the UI), the pass not:
		// the pass fails, saying which. Returned as it is, the SDK would
		// close the pass as cancelled (it looks for a cancellation
		// anywhere in the error's chain) and drop the message. No cause:
		// one would be found there too.
		return res, temporal.NewNonRetryableApplicationError("the pass was not cancelled, but a step of it was: "+err.Error(), "StepCancelled", nil)
	}
	return res, err
}

// cancelledAloneChange versions failing a pass whose step was cancelled
// alone, which closed as cancelled before.
const cancelledAloneChange = "cancelled-alone"

func debugPass(ctx workflow.Context, in PassInput) (PassResult, error) {
	run := workflow.GetInfo(ctx).WorkflowExecution.ID
	p := &Progress{Phase: "validate", Started: workflow.Now(ctx)}
	if err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (Progress, error) { return *p, nil }); err != nil {
		return PassResult{}, err
	}
	cfg, err := passConfig(ctx, in.Config)
	if err != nil {
		return PassResult{}, temporal.NewNonRetryableApplicationError(err.Error(), "InvalidConfig", nil)
	}
	heartbeat, timeout := time.Duration(cfg.Timeouts.Heartbeat), time.Duration(cfg.Timeouts.Activity)
	ctx = withRetries(ctx, time.Duration(cfg.Timeouts.RetryFor))
	cpu := cpuOptions(ctx, heartbeat, timeout)
	short := steps{local: workflow.GetVersion(ctx, localStepsChange, workflow.DefaultVersion, 1) == 1, heartbeat: heartbeat, timeout: timeout}
	var a *activities.Activities

	if cfg.ClassesFile != "" {
		if err := short.run(ctx, a.Classes, activities.ClassesInput{File: cfg.ClassesFile}).Get(ctx, &cfg.Classes); err != nil {
			return PassResult{}, err
		}
	}

	var models activities.CheckModelsResult
	if err := short.run(ctx, a.CheckModels, activities.CheckModelsInput{
		Target: cfg.Target, Similarity: cfg.Similarity, Classes: len(cfg.Classes), ClassesFile: cfg.ClassesFile,
	}).Get(ctx, &models); err != nil {
		return PassResult{}, err
	}

	p.Phase = "plan"
	sets := map[string]schemas.Dataset{
		activities.ErrorSample:  cfg.Data.ErrorSample,
		activities.Pool:         cfg.Data.Pool,
		activities.Train:        cfg.Data.Train,
		activities.Test:         cfg.Data.Test,
		activities.ErrorHeldout: cfg.Data.ErrorHeldout,
	}
	var plans map[string]activities.PlanResult
	var later *plansAhead // the pool's and train's plans, when they go on past the checks
	if workflow.GetVersion(ctx, planLaterChange, workflow.DefaultVersion, 1) == 1 {
		later = startPlans(cpu, run, cfg, sets, []string{activities.ErrorSample, activities.ErrorHeldout, activities.Test}, []string{activities.Pool, activities.Train})
		plans, err = later.wait(ctx, later.first)
	} else {
		plans, err = planAll(cpu, run, cfg, sets)
	}
	if err != nil {
		return PassResult{}, err
	}
	for _, pl := range plans {
		p.ShardsTotal += pl.Shards
	}
	if workflow.GetVersion(ctx, apartChange, workflow.DefaultVersion, 1) == 1 {
		var sets []activities.ApartSet
		for _, name := range []string{activities.ErrorSample, activities.ErrorHeldout, activities.Test} {
			sets = append(sets, activities.ApartSet{Name: name, Shards: plans[name].Shards})
		}
		if err := short.run(ctx, a.CheckApart, activities.ApartInput{Run: run, Sets: sets, Classes: cfg.Classes}).Get(ctx, nil); err != nil {
			return PassResult{}, err
		}
	}

	p.Phase = "embed queries"
	s := shardRunner{runID: run, cfg: cfg, reread: in.Reread, progress: p, scanRejects: new(int), embedded: map[string]int{}, rejects: map[string]int{}}
	nameLate := workflow.GetVersion(ctx, scanAfterPlanChange, workflow.DefaultVersion, 1) == 1
	if !nameLate {
		s.nameScan(ctx)
	}
	embedded := s.run(ctx, activities.ErrorSample, models.Similarity, plans[activities.ErrorSample].Shards, 0)
	if later != nil {
		err = later.watch(ctx, embedded)
	} else {
		err = embedded.Get(ctx, nil)
	}
	if err != nil {
		return PassResult{}, err
	}
	var queries activities.QueriesResult
	if err := short.run(ctx, a.Queries, activities.QueriesInput{
		Run: run, Shards: plans[activities.ErrorSample].Shards, Model: models.Similarity,
	}).Get(ctx, &queries); err != nil {
		return PassResult{}, err
	}
	if later != nil {
		// A large pool's listing outlasts the queries (minutes for 10^9
		// images): say what the pass waits on.
		p.Phase = "plan pool"
		rest, err := later.wait(ctx, later.rest)
		if err != nil {
			return PassResult{}, err
		}
		for name, pl := range rest {
			plans[name] = pl
			p.ShardsTotal += pl.Shards
		}
	}

	// The shards the comparison embeds again, known now (a selection's
	// are not): counted from the start, so that the total does not grow
	// once the scan has reached it.
	p.ShardsTotal += embeddedAgain(cfg, models, plans)

	if nameLate {
		s.nameScan(ctx)
	}
	p.Phase = "scan pool"
	scanned := s.scanBeside(ctx, models, plans, cfg.ScanK())
	stopPhase := p.phaseOf(ctx, scanned)
	waits := scanFutures(scanned)
	if workflow.GetVersion(ctx, trainApartChange, workflow.DefaultVersion, 1) == 1 {
		// Beside the scan: train may be millions of images, read to
		// be probed, not kept.
		waits = append(waits, workflow.ExecuteActivity(cpu, a.CheckTrainApart, activities.TrainApartInput{
			Run: run, TestShards: plans[activities.Test].Shards, HeldoutShards: plans[activities.ErrorHeldout].Shards, TrainShards: plans[activities.Train].Shards,
		}))
	}
	if err := waitAll(ctx, waits...); err != nil {
		return PassResult{}, err
	}
	stopPhase()

	p.Phase = "select"
	// A small pool's merge (its partials at most inlinePoolShards, mostly
	// CachedShards batches' ranges: tens of ms) runs in the workflow task
	// that ends the scan: as an activity it took a round trip more through
	// the server, about a percent of a recurring 250k pass. A large pool's,
	// which reads a partial a shard, stays an activity.
	merge := steps{heartbeat: heartbeat, timeout: timeout}
	if plans[activities.Pool].Shards <= inlinePoolShards && short.local {
		merge.local = workflow.GetVersion(ctx, localMergeChange, workflow.DefaultVersion, 1) == 1
	}
	if err := merge.run(ctx, a.MergeTopK, activities.MergeTopKInput{
		Run: run, Shards: plans[activities.Pool].Shards, Queries: queries.Queries, K: cfg.ScanK(), Scan: s.scan, Keyed: s.keyed,
		Similarity: models.Similarity,
	}).Get(ctx, nil); err != nil {
		return PassResult{}, err
	}

	// Every compared method on the same features and recipe: select →
	// embed its images → retrain → evaluate (compare.go).
	p.Phase = "compare"
	cmp := &comparison{runID: run, cfg: cfg, models: models, plans: plans, shards: s, progress: p}
	ev, ref, err := cmp.run(ctx)
	if err != nil {
		return PassResult{}, err
	}
	var evalKey string
	if err := short.run(ctx, a.WriteEval, activities.WriteEvalInput{Run: run, Eval: ev}).Get(ctx, &evalKey); err != nil {
		return PassResult{}, err
	}

	p.Phase = "report"
	var rep activities.ReportResult
	if err := workflow.ExecuteActivity(cpu, a.Report, activities.ReportInput{
		Run: run, Config: cfg, EvalKey: evalKey, PoolShards: plans[activities.Pool].Shards, Similarity: models.Similarity,
		SampleShards: plans[activities.ErrorSample].Shards, Reference: cfg.ReferenceDCD(), NoPoolRejects: *s.scanRejects == 0,
		Target: models.Target, Embedded: s.rejecting(plans, activities.Test, activities.ErrorHeldout, activities.Train),
	}).Get(ctx, &rep); err != nil {
		return PassResult{}, err
	}
	if s.keyed && workflow.GetVersion(ctx, dropScanChange, workflow.DefaultVersion, 1) == 1 {
		// The scan's partials, a MB a shard, served the merge alone.
		p.Phase = "drop partials"
		if err := workflow.ExecuteActivity(cpu, a.DropScan, activities.DropScanInput{Run: run, Scan: s.scan}).Get(ctx, nil); err != nil {
			workflow.GetLogger(ctx).Warn("the scan's partials stay in storage", "run", run, "scan", s.scan, "error", err)
		}
	}
	p.Phase = "done"
	if len(ev.Classes)*len(ev.Methods) > resultPerClassEntries {
		ev = ev.Totals()
	}
	return PassResult{
		RunID: run, Eval: ev, EvalKey: evalKey, ReportKey: rep.ReportKey, RejectsKey: rep.RejectsKey,
		DebugTrain: ref, Rejects: rep.Rejects, SetRejects: rep.SetRejects, Shards: p.ShardsDone, CachedShards: p.CachedShards,
	}, nil
}

// resultPerClassEntries is the most per-class accuracies (a class's, a
// method's) a pass's result carries, about 40 bytes each: 1,000 classes
// of the five default methods. Beyond it they are in eval.json only: a
// result must stay under Temporal's 2 MB a payload, which 50 variants of
// 1,000 classes would pass.
const resultPerClassEntries = 5000

// planFailFastChange versions planAll's ending at the first failure.
const planFailFastChange = "plan-fail-fast"

// planLaterChange versions waiting for the pool's and train's plans only
// before the scan (plansAhead), so passes started before it replay as
// they ran.
const planLaterChange = "plan-later"

// scanFirstChange versions starting the pool scan's chains before the
// other sets, so passes started before it replay as they ran.
const scanFirstChange = "scan-first"

// localMergeChange versions a small pool's MergeTopK as a local activity,
// so that passes started before it replay as they ran.
const localMergeChange = "local-merge"

// localStepsChange versions the short steps that run as local activities
// (steps), so passes started before it replay as they ran.
const localStepsChange = "local-steps"

// steps runs a pass's short steps (reading the classes, checking models and
// sets, gathering the queries, writing eval.json) as local activities, in
// the worker that runs the pass: each spares a round trip through a task
// queue, 3–20 ms on the dev server, which a pass of fifteen dependent
// steps pays whatever its pool's size (`starter bench`, pass_cached_*).
// Only steps whose work stays small at any pool size qualify: a local
// activity holds the pass's workflow task open (its queries wait) and runs
// outside the worker's -concurrency, so selecting and planning a
// selection, which grow with it, stay regular activities. A worker that
// dies in a step is noticed when the pass's workflow task times out.
type steps struct {
	local              bool // false: regular activities, as passes started before
	heartbeat, timeout time.Duration
}

func (s steps) run(ctx workflow.Context, fn, arg any) workflow.Future {
	if s.local {
		return workflow.ExecuteLocalActivity(localOptions(ctx, s.timeout), fn, arg)
	}
	return workflow.ExecuteActivity(cpuOptions(ctx, s.heartbeat, s.timeout), fn, arg)
}

// waitAll waits for every future and returns the first failure as soon as
// it happens: a test shard that cannot be read, or a model that cannot be
// loaded, should not wait for hours of pool listing or scan to be told.
func waitAll(ctx workflow.Context, fs ...workflow.Future) error {
	var failed error
	sel := workflow.NewSelector(ctx)
	for _, f := range fs {
		sel.AddFuture(f, func(f workflow.Future) {
			if err := f.Get(ctx, nil); err != nil && failed == nil {
				failed = err
			}
		})
	}
	for range fs {
		if sel.Select(ctx); failed != nil {
			return failed
		}
	}
	return nil
}

// scanBeside starts the pool's scan and, beside it, the target's features
// for train, test and E_heldout, which do not depend on it, and returns
// their futures. A set's chains start only when the pass's workflow task
// ends, and local activities (a small set's, or a pool's the pass scans
// itself, in passes started before batchChange) hold it until they end:
// so whatever runs in chains starts first.
// A pool of up to inlinePoolShards is scanned by the pass itself, after
// the other sets' chains have started; a larger one in chains, started
// before the small sets.
func (s shardRunner) scanBeside(ctx workflow.Context, models activities.CheckModelsResult, plans map[string]activities.PlanResult, k int) []setFuture {
	pool := plans[activities.Pool].Shards
	others := []string{activities.Train, activities.Test, activities.ErrorHeldout}
	if pool > inlineShards && pool <= inlinePoolShards && workflow.GetVersion(ctx, inlinePoolChange, workflow.DefaultVersion, 1) == 1 {
		var pending []setFuture
		var starts []workflow.Future
		for _, ds := range others {
			if plans[ds].Shards > inlineShards {
				done, started := s.start(ctx, ds, ds, models.Target, plans[ds].Shards, 0)
				pending, starts = append(pending, setFuture{ds, done}), append(starts, started)
			}
		}
		for _, f := range starts {
			f.Get(ctx, nil) // a chain that failed to start fails its done future
		}
		for _, ds := range others {
			if plans[ds].Shards <= inlineShards {
				pending = append(pending, setFuture{ds, s.run(ctx, ds, models.Target, plans[ds].Shards, 0)})
			}
		}
		return append(pending, setFuture{activities.Pool, s.inlineAsync(ctx, activities.Pool, models.Similarity, pool, k)})
	}
	scan, scanStarted := s.start(ctx, activities.Pool, activities.Pool, models.Similarity, pool, k)
	if workflow.GetVersion(ctx, scanFirstChange, workflow.DefaultVersion, 1) == 1 {
		scanStarted.Get(ctx, nil)
	}
	pending := []setFuture{{activities.Pool, scan}}
	for _, ds := range others {
		pending = append(pending, setFuture{ds, s.run(ctx, ds, models.Target, plans[ds].Shards, 0)})
	}
	return pending
}

// setFuture is a dataset's embedding (the pool's: its scan) under way.
type setFuture struct {
	ds string
	workflow.Future
}

func scanFutures(sets []setFuture) []workflow.Future {
	fs := make([]workflow.Future, len(sets))
	for i, s := range sets {
		fs[i] = s.Future
	}
	return fs
}

// phaseOf keeps the pass's phase on the sets still embedding: "scan pool"
// until the pool's scan ends, then "embed" and the sets that have not, so
// that a pass waiting on its test set's shards does not say it scans. The
// returned stop leaves the phase to the steps after.
func (p *Progress) phaseOf(ctx workflow.Context, sets []setFuture) (stop func()) {
	stopped := false
	pending := map[string]bool{}
	for _, s := range sets {
		pending[s.ds] = true
	}
	for _, s := range sets {
		workflow.Go(ctx, func(ctx workflow.Context) {
			_ = s.Get(ctx, nil)
			delete(pending, s.ds)
			if stopped || pending[activities.Pool] || len(pending) == 0 {
				return
			}
			var names []string
			for _, o := range sets { // in the order started
				if pending[o.ds] {
					names = append(names, o.ds)
				}
			}
			p.Phase = "embed " + strings.Join(names, ", ")
		})
	}
	return func() { stopped = true }
}

// planAll plans datasets side by side and returns each one's counts; the
// first failure ends the wait (waitAll), where passes started before
// planFailFastChange waited for the plans in name order.
func planAll(ctx workflow.Context, run string, cfg schemas.Config, sets map[string]schemas.Dataset) (map[string]activities.PlanResult, error) {
	var a *activities.Activities
	names := sortedNames(sets)
	futures := make([]workflow.Future, len(names))
	for i, name := range names {
		futures[i] = workflow.ExecuteActivity(ctx, a.Plan, planInput(run, name, cfg, sets))
	}
	if workflow.GetVersion(ctx, planFailFastChange, workflow.DefaultVersion, 1) == 1 {
		if err := waitAll(ctx, futures...); err != nil {
			return nil, err
		}
	}
	res := map[string]activities.PlanResult{}
	for i, name := range names {
		var r activities.PlanResult
		if err := futures[i].Get(ctx, &r); err != nil {
			return nil, err
		}
		res[name] = r
	}
	return res, nil
}

// plansAhead is a pass's plans under way: the sets its checks and queries
// need first, which it waits for, and the rest (the pool and train, which
// only the scan needs), which go on beside the checks and the queries. A
// pool of 10^9 images plans for minutes; even a small one's plan held the
// checks a round of the worker's slots (five plans on two, three rounds).
type plansAhead struct {
	futures     map[string]workflow.Future
	first, rest []string
}

// startPlans starts the plans of first, then of rest, in that order: a
// worker takes them in turn as its slots free.
func startPlans(ctx workflow.Context, run string, cfg schemas.Config, sets map[string]schemas.Dataset, first, rest []string) *plansAhead {
	var a *activities.Activities
	p := &plansAhead{futures: map[string]workflow.Future{}, first: first, rest: rest}
	for _, name := range append(slices.Clone(first), rest...) {
		p.futures[name] = workflow.ExecuteActivity(ctx, a.Plan, planInput(run, name, cfg, sets))
	}
	return p
}

// planInput is the plan of dataset name. The pool's and train's are given
// the classes, which their labels must include (activities.PlanInput),
// where a method retrains on them: train's, unless none is the only one;
// the pool's, where one adds pool images (random, all_pool, dcd).
func planInput(run, name string, cfg schemas.Config, sets map[string]schemas.Dataset) activities.PlanInput {
	in := activities.PlanInput{Run: run, Name: name, Dataset: sets[name], ShardSize: cfg.Shards.Size}
	uses := func(skip ...string) bool {
		return slices.ContainsFunc(cfg.Compare, func(m string) bool { return !slices.Contains(skip, m) })
	}
	if name == activities.Train && uses(schemas.MethodNone) || name == activities.Pool && uses(schemas.MethodNone, schemas.MethodTrainOnly) {
		in.Classes = cfg.Classes
	}
	return in
}

// wait waits for the plans of names and returns their counts; any plan's
// failure ends the wait, as soon as it happens.
func (p *plansAhead) wait(ctx workflow.Context, names []string) (map[string]activities.PlanResult, error) {
	var fs []workflow.Future
	for _, name := range names {
		fs = append(fs, p.futures[name])
	}
	if err := p.watch(ctx, fs...); err != nil {
		return nil, err
	}
	res := map[string]activities.PlanResult{}
	for _, name := range names {
		var r activities.PlanResult
		if err := p.futures[name].Get(ctx, &r); err != nil {
			return nil, err
		}
		res[name] = r
	}
	return res, nil
}

// watch waits for fs, ending at the first failure among them or among
// the plans under way: a pool that cannot be listed fails the pass while
// its queries are embedded, not after.
func (p *plansAhead) watch(ctx workflow.Context, fs ...workflow.Future) error {
	var failed error
	pending := len(fs)
	sel := workflow.NewSelector(ctx)
	for _, f := range fs {
		sel.AddFuture(f, func(f workflow.Future) {
			pending--
			if err := f.Get(ctx, nil); err != nil && failed == nil {
				failed = err
			}
		})
	}
	for _, name := range slices.Sorted(maps.Keys(p.futures)) {
		sel.AddFuture(p.futures[name], func(f workflow.Future) {
			if err := f.Get(ctx, nil); err != nil && failed == nil {
				failed = err
			}
		})
	}
	for pending > 0 && failed == nil {
		sel.Select(ctx)
	}
	return failed
}

// shardRunner runs a dataset's shards, in the pass itself when they are
// few, else fanned out over child chains, at most shards.chains at a time,
// and keeps the pass's progress.
type shardRunner struct {
	runID    string
	cfg      schemas.Config
	reread   bool // PassInput.Reread
	progress *Progress
	// scanRejects counts the pool images the scan (the similarity model's
	// search) rejected: with none, the steps that list rejects need not
	// read every pool shard's.
	scanRejects *int
	// embedded counts the images embedded (not rejected) by tag: a
	// dataset's under its own name, all_pool's pool with the target as
	// "pool-target"; rejects those rejected, by dataset, embedded under
	// its own name.
	embedded map[string]int
	rejects  map[string]int
	// scan names the scan (scanName), under which each shard's own
	// partial is written too where keyed (activities.TopKKey).
	scan  string
	keyed bool
}

// counted adds r, shards of dataset ds run with k under tag, to the pass's
// counts. The pool's scan is its only run with k > 0: all_pool embeds the
// pool with the target too, with k = 0, and its rejects are not the
// scan's. A dataset embedded again under another tag (all_pool's pool, an
// external trainer's model's test and E_heldout) rejects the same images
// again: they are counted once.
func (s shardRunner) counted(ds, tag string, k int, r ShardsResult) {
	s.progress.ShardsDone += r.Shards
	s.progress.Images += r.Images
	s.embedded[tag] += r.Images
	if tag == ds {
		s.progress.Rejects += r.Rejects
		s.rejects[ds] += r.Rejects
	}
	s.progress.CachedShards += r.Cached
	if ds == activities.Pool && k > 0 {
		*s.scanRejects += r.Rejects
	}
}

// rejecting are those of the datasets named whose embedding rejected an
// image, with their shard counts: the report reads only their shards'
// rejects (a train set of 10^7 images is 5,000 of them).
func (s shardRunner) rejecting(plans map[string]activities.PlanResult, names ...string) []activities.ApartSet {
	var sets []activities.ApartSet
	for _, name := range names {
		if s.rejects[name] > 0 {
			sets = append(sets, activities.ApartSet{Name: name, Shards: plans[name].Shards})
		}
	}
	return sets
}

// run processes n shards of a dataset; the future is ready when all are done.
func (s shardRunner) run(ctx workflow.Context, ds string, m activities.ModelRef, n, k int) workflow.Future {
	return s.runTagged(ctx, ds, ds, m, n, k)
}

// runTagged is run with the child workflows named after tag rather than
// the dataset, for a dataset embedded with more than one model.
func (s shardRunner) runTagged(ctx workflow.Context, ds, tag string, m activities.ModelRef, n, k int) workflow.Future {
	f, _ := s.start(ctx, ds, tag, m, n, k)
	return f
}

// start is runTagged, and also returns a future that is ready once the
// dataset's first child chain has started (at once for one run inline).
func (s shardRunner) start(ctx workflow.Context, ds, tag string, m activities.ModelRef, n, k int) (done, started workflow.Future) {
	f, settle := workflow.NewFuture(ctx)
	started, setStarted := workflow.NewFuture(ctx)
	workflow.Go(ctx, func(ctx workflow.Context) {
		if n <= inlineShards && workflow.GetVersion(ctx, inlineChange, workflow.DefaultVersion, 1) == 1 {
			setStarted.Set(nil, nil)
			settle.Set(nil, s.inline(ctx, ds, tag, m, n, k))
			return
		}
		defer func() {
			if !started.IsReady() { // no chain started: none ran, or the first failed to
				setStarted.Set(nil, nil)
			}
		}()
		opts := workflow.ChildWorkflowOptions{TaskQueue: CPUQueue}
		if workflow.GetVersion(ctx, staleChainsChange, workflow.DefaultVersion, 1) == 1 {
			opts.WorkflowIDReusePolicy = enumspb.WORKFLOW_ID_REUSE_POLICY_TERMINATE_IF_RUNNING
		}
		sem := workflow.NewSemaphore(ctx, int64(s.cfg.Shards.Chains))
		wg := workflow.NewWaitGroup(ctx)
		// The chains run under chainsCtx, cancelled at the first one's
		// failure: the others' shards are wasted work then.
		chainsCtx, cancelChains := workflow.WithCancel(ctx)
		var firstErr error
		for first := 0; first < n && firstErr == nil; first += ChildShards {
			if err := sem.Acquire(ctx, 1); err != nil {
				firstErr = err
				break
			}
			if firstErr != nil { // a chain failed while this one waited
				sem.Release(1)
				break
			}
			id := fmt.Sprintf("%s/%s/%d", s.runID, tag, first/ChildShards)
			in := s.input(ds, m, first, min(first+ChildShards, n), k)
			wg.Add(1)
			s.progress.Running = append(s.progress.Running, id)
			if tag != ds {
				s.progress.Again = append(s.progress.Again, id)
			}
			workflow.Go(ctx, func(ctx workflow.Context) {
				defer wg.Done()
				defer sem.Release(1)
				opts := opts
				opts.WorkflowID = id
				cctx := workflow.WithChildOptions(chainsCtx, opts)
				var r ShardsResult
				chain := workflow.ExecuteChildWorkflow(cctx, ShardsWorkflow, in)
				if !started.IsReady() {
					chain.GetChildWorkflowExecution().Get(ctx, nil) // a failed start fails chain too
					if !started.IsReady() {
						setStarted.Set(nil, nil)
					}
				}
				err := chain.Get(ctx, &r)
				s.progress.Running = remove(s.progress.Running, id)
				s.progress.Again = remove(s.progress.Again, id)
				s.counted(ds, tag, k, r)
				if err != nil && firstErr == nil {
					firstErr = err
					// Versioned where it happens: a pass started before
					// let its other chains run to their end.
					if workflow.GetVersion(ctx, stopChainsChange, workflow.DefaultVersion, 1) == 1 {
						cancelChains()
					}
				}
			})
		}
		wg.Wait(ctx)
		cancelChains() // (nothing runs under it any more)
		settle.Set(nil, firstErr)
	})
	return f, started
}

// stopChainsChange versions cancelling a dataset's other chains when one
// fails, so that passes started before replay as they ran.
const stopChainsChange = "stop-chains"

// staleChainsChange versions starting a chain over one still running
// under its ID (WORKFLOW_ID_REUSE_POLICY_TERMINATE_IF_RUNNING: the one
// way a child's start can, the conflict policy being the client's). A
// chain's ID is its pass's, so such a chain is of an execution of the
// pass that has ended: a reset in Temporal leaves the reset execution's
// chains running (the server applies no parent-close policy to them), and
// a reset to a point before a chain started starts it again. (A cancelled
// pass waits for its chains to close.) The start failed "child workflow
// execution already started", and so did the pass.
const staleChainsChange = "stale-chains"

// inlineShards is the most shards of a dataset a pass runs itself rather
// than in child chains, the pool's aside: a child's start and end cost
// tens of ms on the dev server, more than a small set's cached shards
// take, and E_sample (usually one shard) is on the pass's critical path. A
// few shards add a few dozen events to the pass's history.
//
// inlinePoolShards is the same for the pool, whose scan is on the critical
// path too: as many shards as one chain run holds (ShardsPerRun when it
// was chosen; a constant of its own, since passes that recorded
// inlinePoolChange must replay with the same bound).
const (
	inlineShards     = 4
	inlinePoolShards = 400
)

// inlineChange versions running small datasets inline, and
// inlinePoolChange a pool of up to inlinePoolShards (scanBeside), so
// passes started before them replay as they ran. The pool's scan is on the
// pass's critical path, between the queries and the merge, and a chain's
// start and end cost 40–50 ms there when every other step costs a few
// (`starter bench`, pass_cached_250k: 3.8–5.2 % of the pass in
// orchestration with a chain, 3.4–4.8 % without).
const (
	inlineChange     = "inline-small-sets"
	inlinePoolChange = "inline-pool"
)

// inlineAsync runs inline in a coroutine; the future is ready when it ends.
func (s shardRunner) inlineAsync(ctx workflow.Context, ds string, m activities.ModelRef, n, k int) workflow.Future {
	f, settle := workflow.NewFuture(ctx)
	workflow.Go(ctx, func(ctx workflow.Context) { settle.Set(nil, s.inline(ctx, ds, ds, m, n, k)) })
	return f
}

// inline runs a dataset's n shards in the pass itself, looked up in the
// cache first (a pool shard searched there too), as long as the shards
// before them were cached: as a chain does.
func (s shardRunner) inline(ctx workflow.Context, ds, tag string, m activities.ModelRef, n, k int) error {
	return runShards(ctx, s.input(ds, m, 0, n, k), n, &scanState{lookUp: true, cached: true}, func(r ShardsResult) { s.counted(ds, tag, k, r) })
}

// input is the ShardsInput of shards [first, end) of a dataset.
func (s shardRunner) input(ds string, m activities.ModelRef, first, end, k int) ShardsInput {
	return ShardsInput{
		Run: s.runID, Dataset: ds, Model: m, First: first, End: end,
		Window: s.cfg.Shards.Window, BatchSize: s.cfg.Shards.BatchSize, K: k,
		Heartbeat: time.Duration(s.cfg.Timeouts.Heartbeat), Timeout: time.Duration(s.cfg.Timeouts.Activity),
		Scan: s.scan, Keyed: s.keyed, Reread: s.reread, RetryFor: time.Duration(s.cfg.Timeouts.RetryFor),
	}
}

func remove(ids []string, id string) []string {
	out := ids[:0:0]
	for _, x := range ids {
		if x != id {
			out = append(out, x)
		}
	}
	return out
}

func sortedNames(m map[string]schemas.Dataset) []string {
	return slices.Sorted(maps.Keys(m))
}
