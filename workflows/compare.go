package workflows

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"dcd/activities"
	"dcd/schemas"
)

// TrainQueue is where external trainer commands run (worker -queues train).
const TrainQueue = "dcd-train"

// comparison runs the compared methods of a pass side by side after the
// pool scan, each as its own chain of activities: select its pool images →
// plan and embed them with the target → (dcd) guard → retrain → evaluate.
// The random baseline waits for the reference dcd method's size.
type comparison struct {
	runID    string
	cfg      schemas.Config
	models   activities.CheckModelsResult
	plans    map[string]activities.PlanResult
	shards   shardRunner
	progress *Progress

	refDone workflow.Future // the reference dcd method's SelectResult
	refSet  workflow.Settable
}

// methodOut is one method's row and, for a selection, its debug-train set.
type methodOut struct {
	Row activities.Method
	Sel activities.SelectResult
}

// run returns eval.json's content and the reference dcd method's
// debug-train set.
func (c *comparison) run(ctx workflow.Context) (activities.Eval, activities.SelectResult, error) {
	ev := activities.Eval{RunID: c.runID, Classes: c.cfg.Classes}
	ref := c.cfg.ReferenceDCD()
	c.refDone, c.refSet = workflow.NewFuture(ctx)
	if ref == "" {
		c.refSet.Set(activities.SelectResult{}, nil)
	}
	c.progress.Methods = map[string]string{}
	futures := make([]workflow.Future, len(c.cfg.Compare))
	evals := make([]activities.EvaluateResult, len(c.cfg.Compare))
	for i, m := range c.cfg.Compare {
		f, set := workflow.NewFuture(ctx)
		futures[i] = f
		workflow.Go(ctx, func(ctx workflow.Context) {
			out, err := c.method(ctx, m, &evals[i])
			if m == ref && !c.refDone.IsReady() {
				c.refSet.Set(out.Sel, err)
			}
			switch {
			case temporal.IsCanceledError(err):
				c.progress.Methods[m] = "cancelled"
			case err != nil:
				c.progress.Methods[m] = "failed"
			default:
				c.progress.Methods[m] = "done"
			}
			set.Set(out, err)
		})
	}
	// A method that fails fails the pass when it does, not after the
	// methods before it in the list (all_pool's hours of retraining).
	if workflow.GetVersion(ctx, failFastMethodsChange, workflow.DefaultVersion, 1) == 1 {
		if err := waitAll(ctx, futures...); err != nil {
			if temporal.IsCanceledError(err) && workflow.GetVersion(ctx, cancelWaitsChange, workflow.DefaultVersion, 1) == 1 &&
				(ctx.Err() != nil || workflow.GetVersion(ctx, passCancelledChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion) {
				// A cancelled pass ends when every method has: a
				// trainer's activity ends only once its command is
				// killed (trainOptions), and a pass that ended before
				// would leave the others' commands running while a
				// pass under its ID starts again.
				for _, f := range futures {
					_ = f.Get(ctx, nil)
				}
			} else if !temporal.IsCanceledError(err) && workflow.GetVersion(ctx, partialEvalChange, workflow.DefaultVersion, 1) == 1 {
				c.writeFinished(ctx, ev, futures, evals)
			}
			return ev, activities.SelectResult{}, err
		}
	}
	var refSel activities.SelectResult
	for i, f := range futures {
		var out methodOut
		if err := f.Get(ctx, &out); err != nil {
			return ev, refSel, err
		}
		ev.Methods = append(ev.Methods, out.Row)
		if c.cfg.Compare[i] == ref {
			refSel = out.Sel
		}
		e := evals[i]
		ev.TestImages, ev.HeldoutImages = e.TestImages, e.HeldoutImages
		ev.TestPerClassImages, ev.HeldoutPerClassImages = e.TestPerClassImages, e.HeldoutPerClassImages
	}
	return ev, refSel, nil
}

// writeFinished writes eval.json with the methods that finished before
// one failed, and names the failed: each took its retraining and
// evaluation (hours for all_pool's on a large pool), which the pass run
// again after the fix repeats, but they are read meanwhile (starter
// result shows them). A failure to write it is logged: the pass's failure
// is the method's.
func (c *comparison) writeFinished(ctx workflow.Context, ev activities.Eval, futures []workflow.Future, evals []activities.EvaluateResult) {
	for i, f := range futures {
		if !f.IsReady() {
			continue
		}
		var out methodOut
		if err := f.Get(ctx, &out); err != nil {
			if !temporal.IsCanceledError(err) {
				ev.Failed = append(ev.Failed, c.cfg.Compare[i])
			}
			continue
		}
		ev.Methods = append(ev.Methods, out.Row)
		e := evals[i]
		ev.TestImages, ev.HeldoutImages = e.TestImages, e.HeldoutImages
		ev.TestPerClassImages, ev.HeldoutPerClassImages = e.TestPerClassImages, e.HeldoutPerClassImages
	}
	if len(ev.Methods) == 0 {
		return
	}
	ev.Incomplete = true
	var a *activities.Activities
	in := activities.WriteEvalInput{Run: c.runID, Eval: ev}
	// A local activity, as the pass's own eval.json: an activity's input
	// is recorded in the history, under its 2 MB a payload, which the
	// per-class accuracies of many methods over many classes outgrow.
	var write workflow.Future
	if workflow.GetVersion(ctx, localPartialEvalChange, workflow.DefaultVersion, 1) == 1 {
		write = workflow.ExecuteLocalActivity(localOptions(ctx, time.Duration(c.cfg.Timeouts.Activity)), a.WriteEval, in)
	} else {
		write = workflow.ExecuteActivity(c.cpu(ctx), a.WriteEval, in)
	}
	if err := write.Get(ctx, nil); err != nil {
		workflow.GetLogger(ctx).Warn("the finished methods' eval.json was not written", "run", c.runID, "error", err)
	}
}

// partialEvalChange versions writing the finished methods' eval.json when
// a method fails, so that passes failed before replay as they ran.
const partialEvalChange = "partial-eval"

// localPartialEvalChange versions writing that eval.json in a local
// activity, so that passes failed before replay as they ran.
const localPartialEvalChange = "local-partial-eval"

// embeddedAgain is how many shards the comparison embeds again whatever
// the selections: all_pool's pool with the target, when the pool was
// scanned with another model, and with an external trainer, test and
// E_heldout with each method's model (all but none's). Progress counts
// them with the plans.
func embeddedAgain(cfg schemas.Config, models activities.CheckModelsResult, plans map[string]activities.PlanResult) int {
	n := 0
	for _, m := range cfg.Compare {
		if m == schemas.MethodAllPool && poolEmbeddedAgain(models) {
			n += plans[activities.Pool].Shards
		}
		if cfg.Retrain.Trainer != nil && m != schemas.MethodNone { // method's trainer branch
			n += plans[activities.Test].Shards + plans[activities.ErrorHeldout].Shards
		}
	}
	return n
}

// poolEmbeddedAgain says whether all_pool embeds the pool with the target:
// the scan embedded it with another model.
func poolEmbeddedAgain(models activities.CheckModelsResult) bool {
	return models.Target.Spec.Digest() != models.Similarity.Spec.Digest()
}

// failFastMethodsChange versions waiting for the methods in the order
// they end, so that passes started before replay as they ran.
const failFastMethodsChange = "fail-fast-methods"

// cancelWaitsChange versions a cancelled pass waiting for all its methods,
// so that passes cancelled before replay as they ran.
const cancelWaitsChange = "cancel-waits-methods"

// passCancelledChange versions waiting only when the pass itself was
// cancelled: a method's child chain cancelled alone (from the UI) fails
// the pass at once, as any method's failure does, where passes started
// before waited for every other method to end first.
const passCancelledChange = "cancel-waits-pass-only"

// methodIDsChange versions naming a method's steps' activities after it,
// so that passes started before replay as they ran.
const methodIDsChange = "method-activity-ids"

// MethodStepID is the activity ID of a method's step (select, guard,
// retrain, train, evaluate): unique in its pass, and naming the method.
func MethodStepID(method, step string) string { return method + "/" + step }

// StepMethod is the method a step's activity ID names, or "" for an
// activity of no method's (numbered by the SDK).
func StepMethod(activityID string) string {
	m, _, ok := strings.Cut(activityID, "/")
	if !ok {
		return ""
	}
	return m
}

// method runs one method's chain and fills its row.
func (c *comparison) method(ctx workflow.Context, m string, evOut *activities.EvaluateResult) (methodOut, error) {
	var a *activities.Activities
	cpu := c.cpu(ctx)
	out := methodOut{Row: activities.Method{Method: m}}
	row := &out.Row
	stage := func(s string) { c.progress.Methods[m] = s }
	// A step's activity ID names its method (methodStepID), which the
	// starter's retry and failure lines show: "Retrain of all_pool".
	named := workflow.GetVersion(ctx, methodIDsChange, workflow.DefaultVersion, 1) == 1
	step := func(ctx workflow.Context, name string) workflow.Context {
		if !named {
			return ctx
		}
		o := workflow.GetActivityOptions(ctx)
		o.ActivityID = MethodStepID(m, name)
		return workflow.WithActivityOptions(ctx, o)
	}
	var debug *activities.DebugSet
	var wall float64

	switch {
	case m == schemas.MethodNone || m == schemas.MethodTrainOnly:
	case m == schemas.MethodAllPool:
		pool, tag := c.plans[activities.Pool], activities.Pool
		if poolEmbeddedAgain(c.models) {
			// The pool was scanned with the similarity model; training
			// needs the target's features of every pool image.
			stage("embed")
			tag = "pool-target"
			if err := c.shards.runTagged(ctx, activities.Pool, tag, c.models.Target, pool.Shards, 0).Get(ctx, nil); err != nil {
				return out, err
			}
		}
		debug = &activities.DebugSet{Dataset: activities.Pool, Shards: pool.Shards}
		// The pool's images that embedded: those rejected were not added,
		// as a selection holds none.
		row.DebugTrainSize = c.shards.embedded[tag]
	case m == schemas.MethodRandom:
		var ref activities.SelectResult
		if err := c.refDone.Get(ctx, &ref); err != nil {
			return out, err
		}
		stage("select")
		if err := workflow.ExecuteActivity(step(cpu, "select"), a.SelectRandom, activities.RandomInput{
			Run: c.runID, Method: m, PoolShards: c.plans[activities.Pool].Shards, PoolImages: c.plans[activities.Pool].Images,
			N: ref.Size, Seed: c.cfg.Seed, ErrorDomain: c.cfg.Selection.ErrorDomain, Similarity: c.models.Similarity,
			NoPoolRejects: *c.shards.scanRejects == 0, Classes: c.cfg.Classes, Reference: ref.Manifest,
		}).Get(ctx, &out.Sel); err != nil {
			return out, err
		}
		shards, err := c.embedSelection(ctx, m, out.Sel)
		if err != nil {
			return out, err
		}
		debug = &activities.DebugSet{Dataset: activities.MethodDataset(m), Shards: shards}
	default: // dcd and its variants
		sel, _ := c.cfg.Selection.Variant(m)
		stage("select")
		var picked activities.SelectResult
		if err := workflow.ExecuteActivity(step(cpu, "select"), a.SelectDebugTrain, activities.SelectInput{
			Run: c.runID, Method: m, Selection: sel, ScanK: c.cfg.ScanK(),
		}).Get(ctx, &picked); err != nil {
			return out, err
		}
		shards, err := c.embedSelection(ctx, m, picked)
		if err != nil {
			return out, err
		}
		out.Sel = picked
		if shards > 0 {
			wall += picked.Seconds
			stage("guard")
			if err := workflow.ExecuteActivity(step(cpu, "guard"), a.GuardSelection, activities.GuardInput{
				Run: c.runID, Method: m, Selected: picked.Manifest, Dataset: activities.MethodDataset(m), Shards: shards,
				Model: c.models.Target, TestShards: c.plans[activities.Test].Shards, HeldoutShards: c.plans[activities.ErrorHeldout].Shards,
				Dedupe: sel.Dedupe, Leakage: sel.Leakage, ErrorDomain: sel.ErrorDomain, Classes: c.cfg.Classes,
			}).Get(ctx, &out.Sel); err != nil {
				return out, err
			}
			out.Sel.Note = picked.Note
		}
		debug = &activities.DebugSet{Dataset: activities.MethodDataset(m), Shards: shards, Keep: out.Sel.Manifest}
		if m == c.cfg.ReferenceDCD() {
			c.refSet.Set(out.Sel, nil) // random may start
		}
	}
	if m != schemas.MethodAllPool {
		row.DebugTrainSize = out.Sel.Size
		row.SelectionPrecision = out.Sel.Precision
		row.Duplicates, row.Leaks = out.Sel.Duplicates, out.Sel.Leaks
		row.DebugTrain = out.Sel.Manifest
		row.Note = out.Sel.Note
		wall += out.Sel.Seconds
	}

	eval := activities.EvaluateInput{
		Run: c.runID, Method: m, Model: c.models.Target, Classes: c.cfg.Classes,
		TestShards: c.plans[activities.Test].Shards, HeldoutShards: c.plans[activities.ErrorHeldout].Shards,
	}
	switch {
	case m == schemas.MethodNone:
	case c.cfg.Retrain.Trainer == nil:
		stage("retrain")
		var r activities.RetrainResult
		if err := workflow.ExecuteActivity(step(cpu, "retrain"), a.Retrain, activities.RetrainInput{
			Run: c.runID, Method: m, Model: c.models.Target, Classes: c.cfg.Classes,
			TrainShards: c.plans[activities.Train].Shards, Debug: debug, Recipe: c.cfg.Retrain,
			Seed: c.cfg.Seed, ErrorDomain: c.cfg.Selection.ErrorDomain, Export: schemas.IsDCD(m),
		}).Get(ctx, &r); err != nil {
			return out, err
		}
		wall += r.Seconds
		row.TrainRows, row.DebugRows, row.Head, row.Model, row.ModelError = r.TrainRows, r.DebugRows, r.HeadKey, r.ModelKey, r.ModelError
		row.SkippedLabels = r.SkippedLabels
		row.Note = joinNotes(row.Note, skippedNote(r), unlearnedNote(r), domainNote(r, c.cfg.Selection.ErrorDomain))
		// Of the rows it trained on, for every method: a selection's
		// images whose weak label is not a class, or that did not embed,
		// are not among them (all_pool's never were).
		row.SelectionPrecision = r.Precision
		eval.HeadKey = r.HeadKey
	default:
		stage("train")
		var r activities.TrainExternalResult
		if err := workflow.ExecuteActivity(step(c.trainOptions(ctx), "train"), a.TrainExternal, activities.TrainExternalInput{
			Run: c.runID, Method: m, Trainer: *c.cfg.Retrain.Trainer, Target: c.models.Target, TargetConfig: c.cfg.Target,
			Classes: c.cfg.Classes, Recipe: c.cfg.Retrain, Seed: c.cfg.Seed,
			TrainShards: c.plans[activities.Train].Shards, Debug: debug,
		}).Get(ctx, &r); err != nil {
			return out, err
		}
		wall += r.Seconds
		row.Model, row.Log = r.Model.Path, r.LogKey
		// Evaluate the produced model end to end: its scores for every
		// test and E_heldout image, from the images.
		stage("embed")
		tag := "eval-" + activities.MethodDataset(m)
		test, held := c.plans[activities.Test].Shards, c.plans[activities.ErrorHeldout].Shards
		ft := c.shards.runTagged(ctx, activities.Test, tag+"-test", r.Model, test, 0)
		fh := c.shards.runTagged(ctx, activities.ErrorHeldout, tag+"-heldout", r.Model, held, 0)
		for _, f := range []workflow.Future{ft, fh} {
			if err := f.Get(ctx, nil); err != nil {
				return out, err
			}
		}
		eval.Scores = &r.Model
	}
	stage("evaluate")
	if err := workflow.ExecuteActivity(step(cpu, "evaluate"), a.Evaluate, eval).Get(ctx, evOut); err != nil {
		return out, err
	}
	wall += evOut.Seconds
	row.TestAccuracy, row.HeldoutAccuracy = evOut.TestAccuracy, evOut.HeldoutAccuracy
	row.TestPerClass, row.HeldoutPerClass = evOut.TestPerClass, evOut.HeldoutPerClass
	row.WallSeconds = wall
	return out, nil
}

// embedSelection plans a method's selection as a dataset and embeds it
// with the target; it returns the number of shards (0 for an empty one).
func (c *comparison) embedSelection(ctx workflow.Context, m string, sel activities.SelectResult) (int, error) {
	if sel.Size == 0 {
		return 0, nil
	}
	c.progress.Methods[m] = "embed"
	ds := activities.MethodDataset(m)
	plan, err := planAll(c.cpu(ctx), c.runID, c.cfg, map[string]schemas.Dataset{ds: {Manifest: sel.Manifest}})
	if err != nil {
		return 0, err
	}
	n := plan[ds].Shards
	c.progress.ShardsTotal += n
	if workflow.GetVersion(ctx, gatherChange, workflow.DefaultVersion, 1) == 1 {
		// The pool's target features may be cached (the target is the
		// similarity model): then the selection's are copied out of them
		// and no image is read.
		var a *activities.Activities
		var g activities.GatherResult
		err := workflow.ExecuteActivity(c.cpu(ctx), a.GatherSelection, activities.GatherInput{
			Run: c.runID, Dataset: ds, Shards: n, Manifest: sel.Manifest, Model: c.models.Target,
		}).Get(ctx, &g)
		switch {
		case err != nil && temporal.IsCanceledError(err):
			return 0, err
		case err != nil:
			// Gathering only saves work: what it could not do is embedded.
			workflow.GetLogger(ctx).Warn("selection not gathered, embedding it", "method", m, "error", err)
		case g.Shards == n:
			c.progress.ShardsDone += n
			c.progress.CachedShards += n
			c.progress.Images += g.Images
			c.progress.Rejects += g.Rejects
			return n, nil
		}
	}
	return n, c.shards.run(ctx, ds, c.models.Target, n, 0).Get(ctx, nil)
}

// gatherChange versions GatherSelection before a selection is embedded, so
// passes started before it replay as they ran.
const gatherChange = "gather-selection"

func (c *comparison) cpu(ctx workflow.Context) workflow.Context {
	return cpuOptions(ctx, time.Duration(c.cfg.Timeouts.Heartbeat), time.Duration(c.cfg.Timeouts.Activity))
}

// trainOptions runs the external trainer on the train queue and, when the
// pass is cancelled, waits until the activity has killed the command. Three
// tries, not timeouts.retry_for's: a command that fails is mostly one that
// fails every time (a bug, a wrong path), and each try is a retraining.
func (c *comparison) trainOptions(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           TrainQueue,
		StartToCloseTimeout: time.Duration(c.cfg.Timeouts.Activity),
		HeartbeatTimeout:    time.Duration(c.cfg.Timeouts.Heartbeat),
		WaitForCancellation: true,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    time.Second,
			BackoffCoefficient: 2,
			MaximumInterval:    time.Minute,
			MaximumAttempts:    3,
		},
	})
}

// skippedNote says how many of a method's images retraining left out for a
// weak label that is no class of the target: the row's debug-train size
// counts them, its accuracies do not (all of them left out, the method
// scores as train_only), and a pool labelled in another vocabulary than
// the target's classes shows no other sign of it.
func skippedNote(r activities.RetrainResult) string {
	if r.SkippedLabels == 0 {
		return ""
	}
	which := "" // a worker from before SkippedExamples names none
	if n := len(r.SkippedExamples); n > 0 {
		which = " (" + quoted(r.SkippedExamples, n == activities.MaxSkippedExamples) + ")" // and maybe others
	}
	skipped := fmt.Sprintf("%d of its images were not retrained on: their weak label is not a class of the target%s", r.SkippedLabels, which)
	if r.SkippedLabels == 1 {
		skipped = fmt.Sprintf("1 of its images was not retrained on: its weak label is not a class of the target%s", which)
	}
	if r.DebugRows == 0 {
		skipped += "; none of its images was, so it scores as train_only"
	}
	return skipped
}

// unlearnedNote names the classes a method's retraining had no image of,
// in train or its own: a train set missing a class shows no other sign
// than that class's accuracy of 0.
func unlearnedNote(r activities.RetrainResult) string {
	if r.Unlearned == 0 {
		return ""
	}
	which := quoted(r.UnlearnedExamples, r.Unlearned > len(r.UnlearnedExamples))
	what, it := "class "+which, "it"
	if r.Unlearned > 1 {
		what, it = fmt.Sprintf("%d classes (%s)", r.Unlearned, which), "them"
	}
	if r.DebugRows == 0 { // the method added none
		return fmt.Sprintf("train has no image of %s: the head never predicts %s", what, it)
	}
	return fmt.Sprintf("neither train nor the images it added have any image of %s: the head never predicts %s", what, it)
}

// domainNote names the domains of a method's retrained rows when none is
// selection.error_domain: a precision of 0 in every row is more often a
// misspelt domain than a selection that found nothing.
func domainNote(r activities.RetrainResult, domain string) string {
	if r.Precision == nil || *r.Precision != 0 || len(r.Domains) == 0 {
		return ""
	}
	return fmt.Sprintf("no image it was retrained on has domain %q (selection.error_domain); theirs include %s", domain, quoted(r.Domains, false))
}

// quoted lists a note's examples quoted, ending "…" when there are more.
func quoted(examples []string, more bool) string {
	q := make([]string, len(examples), len(examples)+1)
	for i, e := range examples {
		q[i] = strconv.Quote(e)
		if e == "" { // a manifest's empty label, a WebDataset sample's missing .cls
			q[i] = "no label"
		}
	}
	if more {
		q = append(q, "…")
	}
	return strings.Join(q, ", ")
}

// joinNotes joins a row's notes, leaving out empty ones.
func joinNotes(notes ...string) string {
	return strings.Join(slices.DeleteFunc(notes, func(n string) bool { return n == "" }), "; ")
}
