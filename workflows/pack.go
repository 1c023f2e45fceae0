package workflows

import (
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/schemas"
)

// PackInput is a dataset to copy into WebDataset archives (`starter pack`).
// The fields after Window are the workflow's own, carried by
// continue-as-new.
type PackInput struct {
	Dataset    schemas.Dataset
	Out        string
	PerArchive int // images per archive; 0 means DefaultPerArchive
	Readers    int // image reads in flight per archive; 0 means DefaultPackReaders
	Window     int // archives written at once, by any workers; 0 means DefaultPackWindow
	// Heartbeat and Timeout bound each activity; zero means the pass's
	// heartbeat (schemas.Config.Timeouts) and PackTimeout.
	Heartbeat, Timeout time.Duration

	First int        // next archive to write
	Done  PackResult // accumulated by earlier runs
}

// Defaults of a pack (`starter pack`'s flags).
const (
	DefaultPerArchive  = 10000
	DefaultPackReaders = 64 // a remote store answers each read after its latency
	DefaultPackWindow  = 16
)

// PackTimeout bounds a pack's activities unless PackInput says: PlanPack
// lists the whole dataset, and an object store lists 1,000 keys a request,
// so a prefix of 10^8 objects takes hours. Heartbeats, not this bound,
// notice a worker that died.
const PackTimeout = 24 * time.Hour

// PackResult is a pack's progress, then its outcome.
type PackResult struct {
	Started  time.Time
	Archives int // planned; 0 until the dataset is listed
	Images   int // planned
	Done     int // archives done: Resumed of them found whole, from an earlier pack,
	Resumed  int // and Empty with no image that could be packed, so no .tar
	Empty    int
	Packed   int // images in the archives done
	Bytes    int64
	Skipped  int
	// FirstSkip is the first image left out, when any was; the whole list
	// is in the pack's skipped.csv.
	FirstSkip *dataset.Skip `json:",omitempty"`
}

func (r *PackResult) add(a activities.PackArchiveResult) {
	r.Done++
	if a.Key == "" {
		r.Empty++
	}
	r.Packed += a.Images
	r.Bytes += a.Bytes
	r.Skipped += a.Skipped
	if a.Resumed {
		r.Resumed++
	}
	if a.FirstSkip != nil && (r.FirstSkip == nil || a.FirstSkip.Item < r.FirstSkip.Item) {
		r.FirstSkip = a.FirstSkip
	}
}

// PackWorkflow packs a dataset: PlanPack, then PackArchive over the
// archives in a sliding window of Window, ShardsPerRun per run, continuing
// as new, then FinishPack. Every archive is a retryable activity that any
// worker may take, so every worker added shares a pack, and one started
// again over the same output keeps the archives already whole.
func PackWorkflow(ctx workflow.Context, in PackInput) (PackResult, error) {
	done := in.Done
	if err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (PackResult, error) { return done, nil }); err != nil {
		return done, err
	}
	in.PerArchive = orDefault(in.PerArchive, DefaultPerArchive)
	in.Readers = orDefault(in.Readers, DefaultPackReaders)
	in.Window = orDefault(in.Window, DefaultPackWindow)
	heartbeat, timeout := in.Heartbeat, in.Timeout
	if heartbeat == 0 {
		heartbeat = time.Duration(schemas.Config{}.WithDefaults().Timeouts.Heartbeat)
	}
	if timeout == 0 {
		timeout = PackTimeout
	}
	cpu := cpuOptions(ctx, heartbeat, timeout)
	cancelWaits := workflow.GetVersion(ctx, packCancelWaitsChange, workflow.DefaultVersion, 1) == 1
	if cancelWaits {
		cpu = workflow.WithWaitForCancellation(cpu, true)
	}
	id := workflow.GetInfo(ctx).WorkflowExecution.ID
	var a *activities.Activities

	if done.Started.IsZero() {
		done.Started = workflow.Now(ctx)
		var plan activities.PlanResult
		if err := workflow.ExecuteActivity(cpu, a.PlanPack, activities.PlanPackInput{
			ID: id, Dataset: in.Dataset, Out: in.Out, PerArchive: in.PerArchive,
		}).Get(ctx, &plan); err != nil {
			return done, err
		}
		done.Archives, done.Images = plan.Shards, plan.Images
	}

	stop := min(in.First+ShardsPerRun, done.Archives)
	sem := workflow.NewSemaphore(ctx, int64(in.Window))
	wg := workflow.NewWaitGroup(ctx)
	var firstErr error
	for n := in.First; n < stop && firstErr == nil; n++ {
		if err := sem.Acquire(ctx, 1); err != nil { // cancelled
			if cancelWaits {
				wg.Wait(ctx) // the archives under way end first
			}
			return done, err
		}
		if firstErr != nil && workflow.GetVersion(ctx, packStopChange, workflow.DefaultVersion, 1) == 1 {
			sem.Release(1) // an archive failed while this one waited: none more
			break
		}
		wg.Add(1)
		workflow.Go(ctx, func(ctx workflow.Context) {
			defer wg.Done()
			defer sem.Release(1)
			var r activities.PackArchiveResult
			err := workflow.ExecuteActivity(cpu, a.PackArchive, activities.PackArchiveInput{
				ID: id, Out: in.Out, Archive: n, Readers: in.Readers,
			}).Get(ctx, &r)
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if err == nil {
				done.add(r)
			}
		})
	}
	wg.Wait(ctx)
	if firstErr != nil {
		return done, firstErr
	}
	if stop < done.Archives {
		next := in
		next.First, next.Done = stop, done
		return done, continueAsNew(ctx, PackWorkflow, next)
	}

	if err := workflow.ExecuteActivity(cpu, a.FinishPack, activities.FinishPackInput{Out: in.Out, Archives: done.Archives}).Get(ctx, nil); err != nil {
		return done, err
	}
	if done.Packed == 0 {
		return done, temporal.NewNonRetryableApplicationError("pack: no image of the dataset could be packed; skipped.csv in the output says why", "NothingPacked", nil)
	}
	return done, nil
}

// packCancelWaitsChange versions a cancelled pack ending once its
// activities have: it ended at once, and its archives under way were
// written after it said it was cancelled (a user deleting the output
// then raced them).
const packCancelWaitsChange = "pack-cancel-waits"

// packStopChange versions starting no archive after one failed, which a
// pack started before did once (the failed archive's slot went to it).
const packStopChange = "pack-stop"

// orDefault is v, or def when v is not set (not positive).
func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}
