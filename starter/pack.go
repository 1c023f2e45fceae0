package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"dcd/internal/redact"
	"dcd/schemas"
	"dcd/workflows"
)

const packSynopsis = "-prefix REF|-manifest REF [-per-archive N] [-readers N] [-window N] [-id ID] OUT"

type packArgs struct {
	id string
	in workflows.PackInput
}

func parsePack(e *cli, args []string) (packArgs, error) {
	var a packArgs
	fs := e.flags("pack")
	fs.StringVar(&a.in.Dataset.Prefix, "prefix", "", "the dataset to pack: an ImageFolder prefix (<prefix>/<label>/<file>), key or URL")
	fs.StringVar(&a.in.Dataset.Manifest, "manifest", "", "the dataset to pack: a CSV or Parquet manifest (uri,label[,domain]), key or URL")
	fs.IntVar(&a.in.PerArchive, "per-archive", workflows.DefaultPerArchive, "images per archive")
	fs.IntVar(&a.in.Readers, "readers", workflows.DefaultPackReaders, "image reads in flight per archive; a remote store answers each after its latency (about as many images are held in memory)")
	fs.IntVar(&a.in.Window, "window", workflows.DefaultPackWindow, "archives written at once, shared by the workers (each runs -concurrency at most)")
	fs.StringVar(&a.id, "id", "", "workflow ID of the pack (default pack-<OUT>)")
	out, err := oneArg(fs, packSynopsis, "output prefix", args)
	if err != nil {
		return a, err
	}
	a.in.Out = out
	if (a.in.Dataset.Prefix == "") == (a.in.Dataset.Manifest == "") {
		return a, usageErrorf("pack: give the dataset as one of -prefix and -manifest (usage: starter pack %s)", packSynopsis)
	}
	// The dataset is the pack's workflow input, recorded in its history.
	for flag, ref := range map[string]string{"-prefix": a.in.Dataset.Prefix, "-manifest": a.in.Dataset.Manifest, "OUT": out} {
		if what := redact.Credential(ref); what != "" {
			return a, usageErrorf("pack: %s: the URL holds %s: a pack's input is recorded in its history, where whoever reads the server reads it; give the workers access through their environment's credentials", flag, what)
		}
	}
	if a.in.PerArchive < 1 || a.in.Readers < 1 || a.in.Window < 1 {
		return a, usageErrorf("pack: -per-archive, -readers and -window must be at least 1")
	}
	if a.id == "" {
		a.id = packID(out)
	}
	if err := checkID("-id", a.id); err != nil { // its plan is runs/<id>/
		return a, err
	}
	return a, nil
}

// packID is a pack's default workflow ID: the output, so that the same
// command run again finds the pack it started, running or interrupted.
// It is also a key prefix (the pack's plan), so it keeps to safe bytes;
// where that changed the output's name, a digest of the name keeps two
// outputs (pool/wds and pool-wds) from sharing an ID.
func packID(out string) string {
	out = strings.TrimRight(out, "/") // pool-wds/ and pool-wds are one output
	id := strings.Trim(unsafeID.ReplaceAllString(out, "-"), "-")
	id = id[:min(len(id), maxIDBytes-len("pack-")-9)] // room for the prefix and a digest
	if id != out {
		sum := sha256.Sum256([]byte(out))
		id += "-" + hex.EncodeToString(sum[:4])
	}
	return "pack-" + id
}

var unsafeID = regexp.MustCompile(`[^A-Za-z0-9._]+`)

// cmdPack copies a dataset stored one object per image into WebDataset
// archives, which a pass reads with one range read per MiB instead of one
// read per image. The pack is a workflow (workflows.PackWorkflow) whose
// archives any worker writes; this command starts it, or finds it running,
// and shows its progress to the end.
func cmdPack(ctx context.Context, e *cli, args []string) error {
	a, err := parsePack(e, args)
	if err != nil {
		return err
	}
	c, err := e.Client()
	if err != nil {
		return err
	}
	_, err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: a.id, TaskQueue: workflows.CPUQueue, WorkflowExecutionErrorWhenAlreadyStarted: true,
	}, workflows.PackWorkflow, a.in)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	switch {
	case errors.As(err, &started):
		if err := samePack(ctx, c, a); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "pack %s is running already; watching it\n  %s\n", a.id, workflowURL(e.g, a.id))
	case err != nil:
		return fmt.Errorf("start pack %s: %w", a.id, err)
	default:
		fmt.Fprintf(e.stdout, "started pack %s\n  %s\n", a.id, workflowURL(e.g, a.id))
	}

	var res workflows.PackResult
	err = e.follow(ctx, c, a.id, &res, "pack", packProgress(c, a.id),
		fmt.Sprintf("the same command watches it again; `starter status %s`, `starter cancel %s`", a.id, a.id), packStuck(c, a.id, e.g))
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "packed %d images into %d archives under %s (%.1f MiB)\n", res.Packed, res.Archives-res.Empty, a.in.Out, float64(res.Bytes)/(1<<20))
	if res.Resumed > 0 {
		fmt.Fprintf(e.stdout, "%d of the archives were whole already, from an earlier pack into %s\n", res.Resumed, a.in.Out)
	}
	if res.FirstSkip != nil {
		fmt.Fprintf(e.stdout, "skipped %d images, listed with the reason in skipped.csv beside the archives; the first: %s (%s)\n",
			res.Skipped, res.FirstSkip.URI, res.FirstSkip.Reason)
	}
	fmt.Fprintf(e.stdout, "use it in a pass's config as:  webdataset: %s\n", a.in.Out)
	return nil
}

// packLine is a pack's progress on one line; rate is its images/s of
// late, or < 0 for its average since it began.
func packLine(p workflows.PackResult, now time.Time, rate float64) string {
	if p.Archives == 0 {
		return "listing the dataset"
	}
	elapsed, rateUnit := now.Sub(p.Started), "images/s"
	if rate < 0 {
		rate, rateUnit = 0, "images/s since start"
		if s := elapsed.Seconds(); s >= 0.25 { // a pass of cached features is far along in its first second
			rate = float64(p.Packed+p.Skipped) / s
		}
	}
	return fmt.Sprintf("archives %d/%d | %d of %d images packed | %d skipped | %.0f %s | %s",
		p.Done, p.Archives, p.Packed, p.Images, p.Skipped, rate, rateUnit, elapsed.Round(time.Second))
}

// samePack checks that the workflow running as a.id packs what a asks for,
// so that the command does not watch another pack and then report it as
// its own. The current run's input says: a pack continued as new keeps its
// dataset, output and archive size.
func samePack(ctx context.Context, c client.Client, a packArgs) error {
	ev, err := c.GetWorkflowHistory(ctx, a.id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT).Next()
	if err != nil {
		return fmt.Errorf("pack %s is running already, and its input cannot be read: %w", a.id, err)
	}
	started := ev.GetWorkflowExecutionStartedEventAttributes()
	if name := started.GetWorkflowType().GetName(); name != "PackWorkflow" {
		return fmt.Errorf("%s is a running %s, not a pack; give the pack another -id", a.id, name)
	}
	var in workflows.PackInput
	if err := converter.GetDefaultDataConverter().FromPayloads(started.GetInput(), &in); err != nil {
		return fmt.Errorf("pack %s is running already, and its input cannot be read: %w", a.id, err)
	}
	if !samePackInput(in, a.in) {
		return fmt.Errorf("pack %s is running already, of %s into %q in archives of %d, not of %s into %q in archives of %d; give this one another -id, or `starter cancel %s` first",
			a.id, describeDataset(in.Dataset), in.Out, in.PerArchive, describeDataset(a.in.Dataset), a.in.Out, a.in.PerArchive, a.id)
	}
	return nil
}

// samePackInput says whether two packs' inputs are one pack's: an output
// with and without its trailing slash is one, as packID has it.
func samePackInput(x, y workflows.PackInput) bool {
	return x.Dataset == y.Dataset && x.PerArchive == y.PerArchive && strings.TrimRight(x.Out, "/") == strings.TrimRight(y.Out, "/")
}

// describeDataset names a dataset as its flag would.
func describeDataset(ds schemas.Dataset) string {
	switch {
	case ds.Prefix != "":
		return "-prefix " + redact.URL(ds.Prefix)
	case ds.Manifest != "":
		return "-manifest " + redact.URL(ds.Manifest)
	}
	return "-webdataset " + redact.URL(ds.WebDataset)
}
