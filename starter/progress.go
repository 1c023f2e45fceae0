package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"golang.org/x/sync/errgroup"

	"dcd/internal/devserver"
	"dcd/workflows"
)

// queryTimeout bounds one progress query; a pass no worker has picked up
// yet does not answer. One scanning cached shards in local activities
// (a pass started before they were looked up in batches) answers between
// them, every 2 s or so (workflows.runShards).
const queryTimeout = 5 * time.Second

// idleEvery is how often a watch asks whether the task queues have
// workers.
const idleEvery = 10 * time.Second

// fetchProgress queries a pass's Progress and adds the shards in flight in
// its running children, queried side by side (one scanning cached shards
// may take a couple of seconds to answer). A child that does not answer
// (it just finished, or has not started) is left out.
func fetchProgress(ctx context.Context, c client.Client, id string) (workflows.Progress, error) {
	var p workflows.Progress
	if err := query(ctx, c, id, &p); err != nil {
		return p, err
	}
	results := make([]workflows.ShardsResult, len(p.Running))
	answered := make([]bool, len(p.Running))
	var g errgroup.Group
	g.SetLimit(16) // a pass may run hundreds of chains: each query is a workflow task of a worker's
	for i, child := range p.Running {
		g.Go(func() error { answered[i] = query(ctx, c, child, &results[i]) == nil; return nil })
	}
	g.Wait()
	children := map[string]workflows.ShardsResult{}
	for i, r := range results {
		if answered[i] {
			children[p.Running[i]] = r
		}
	}
	return withChildren(p, children), nil
}

func query(ctx context.Context, c client.Client, id string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	v, err := c.QueryWorkflow(ctx, id, "", workflows.ProgressQuery)
	if err != nil {
		return err
	}
	return v.Get(into)
}

// withChildren adds the running children's counts (by workflow ID) to the
// pass's, which only holds the children that have finished; the rejects of
// one that embeds a dataset again (Progress.Again) were counted with the
// dataset's first embedding.
func withChildren(p workflows.Progress, children map[string]workflows.ShardsResult) workflows.Progress {
	for id, r := range children {
		p.ShardsDone += r.Shards
		p.Images += r.Images
		if !slices.Contains(p.Again, id) {
			p.Rejects += r.Rejects
		}
		p.CachedShards += r.Cached
	}
	return p
}

// statusLine is a pass's progress on one line; rate is its images/s of
// late, or < 0 for its average since it began.
func statusLine(p workflows.Progress, now time.Time, rate float64) string {
	elapsed := time.Duration(0)
	if !p.Started.IsZero() && now.After(p.Started) {
		elapsed = now.Sub(p.Started)
	}
	rateUnit := "images/s"
	if rate < 0 {
		rate, rateUnit = 0, "images/s since start"
		if s := elapsed.Seconds(); s >= 0.25 { // a pass of cached features is far along in its first second
			rate = float64(p.Images) / s
		}
	}
	total := "?"
	if p.ShardsTotal > 0 {
		total = fmt.Sprint(p.ShardsTotal)
	}
	phase := p.Phase
	if phase == "" {
		phase = "starting"
	}
	line := fmt.Sprintf("%-13s | shards %d/%s | %d images | %.0f %s | %d rejects | %d cached shards | %s",
		phase, p.ShardsDone, total, p.Images, rate, rateUnit, p.Rejects, p.CachedShards, elapsed.Round(time.Second))
	if len(p.Methods) > 0 { // the comparison, the longest phase: where each method is
		var stages []string
		for _, m := range slices.Sorted(maps.Keys(p.Methods)) {
			stages = append(stages, m+" "+p.Methods[m])
		}
		line += " | " + strings.Join(stages, ", ")
	}
	return line
}

// busyOrGone is why a pass whose workflow queue a worker polled lately
// does not answer (the server keeps a dead worker among the pollers for
// minutes).
const busyOrGone = "its worker may be in a step that holds its answers (checking the models, say), or gone"

// unanswered says why a workflow did not answer its progress query: the
// server at address gone (nothing listens there), its worker gone, when
// the server says no worker polled its queue of late (the worker that ran
// it was killed, and none other polls), else busy or gone.
func unanswered(what string, err error, address string) string {
	if !devserver.Reachable(address) {
		return fmt.Sprintf("the Temporal server at %s does not answer (nothing listens there): the %s goes on where it stood once the server is back (a local one: `starter dev`)", address, what)
	}
	if workerGone(err) {
		return fmt.Sprintf("no worker has polled the %s's workflows lately (%s): the one running it died or was stopped; start one (bin/worker) and the %s goes on from where it stood",
			what, workflows.CPUQueue, what)
	}
	return shortError(err) + ": " + busyOrGone
}

// workerGone says whether err is the server's answer to a query that no
// worker has polled the workflow's queue of late.
func workerGone(err error) bool {
	var fp *serviceerror.FailedPrecondition
	return errors.As(err, &fp) && strings.Contains(fp.Error(), "no poller seen")
}

// watch shows a pass's progress until it ends and returns its result.
// Interrupting stops the watching, not the pass.
func (e *cli) watch(ctx context.Context, c client.Client, id string) (workflows.PassResult, error) {
	var res workflows.PassResult
	err := e.follow(ctx, c, id, &res, "pass", passProgress(c, id), fmt.Sprintf("`starter status %s`, `starter cancel %s`", id, id), passStuck(c, id, e.g))
	return res, err
}

// A progress is a workflow's progress line at a time.
type progress func(ctx context.Context, now time.Time) (string, error)

// rateWindow is how far back a watch's images/s looks. The pass's
// average since it began says little of now: it falls while the pass
// does anything but embed (a step retried, the comparison on cached
// features).
const rateWindow = 10 * time.Second

// passProgress gives a pass's lines, with its images/s of late (a
// watch's; status's single look has the average).
func passProgress(c client.Client, id string) progress {
	var r recentRate
	return func(ctx context.Context, now time.Time) (string, error) {
		p, err := fetchProgress(ctx, c, id)
		if err != nil {
			return statusLine(p, now, -1), err
		}
		return statusLine(p, now, r.add(now, p.Images)), nil
	}
}

// recentRate is the images/s over the last rateWindow of a watch's
// samples, once they span half of it (< 0 before, and after a silence
// longer than the window: the average since the start is shown then).
type recentRate []struct {
	at     time.Time
	images int
}

func (r *recentRate) add(now time.Time, images int) float64 {
	*r = append(*r, struct {
		at     time.Time
		images int
	}{now, images})
	for len(*r) > 1 && now.Sub((*r)[0].at) > rateWindow {
		*r = (*r)[1:]
	}
	first := (*r)[0]
	if now.Sub(first.at) < rateWindow/2 {
		return -1
	}
	// A chain that did not answer leaves its images out for a line: no
	// rate below none.
	return max(0, float64(images-first.images)/now.Sub(first.at).Seconds())
}

func packProgress(c client.Client, id string) progress {
	var r recentRate
	return func(ctx context.Context, now time.Time) (string, error) {
		var p workflows.PackResult
		if err := query(ctx, c, id, &p); err != nil {
			return packLine(p, now, -1), err
		}
		return packLine(p, now, r.add(now, p.Packed+p.Skipped)), nil
	}
}

// follow shows a workflow's progress line (fetch) until it ends, and stores its
// result in res. On a terminal the line is redrawn every second; otherwise
// a line is printed every 5 s, and every idleEvery stuck adds what the
// workflow waits on without a worker. Interrupting stops the watching,
// not the workflow (a "pass" or "pack"), which goes on as hint says.
func (e *cli) follow(ctx context.Context, c client.Client, id string, res any, what string, fetch progress, hint string, stuck stuck) error {
	done := make(chan error, 1)
	go func() { done <- awaitEnd(ctx, c, id, res) }()
	stopped := fmt.Errorf("stopped watching; %s %s goes on (%s)", what, id, hint)

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var printed time.Time
	var last string // the last line the workflow answered, and when
	var lastAt time.Time
	width := 0
	var checked time.Time
	idle := ""
	endLine := func() {
		if e.tty && width > 0 {
			fmt.Fprintln(e.stdout)
		}
	}
	for {
		select {
		case err := <-done:
			endLine()
			if ctx.Err() != nil {
				return stopped
			}
			var ended *temporal.WorkflowExecutionError
			switch {
			case err == nil:
				return nil
			case errors.As(err, &ended):
				return fmt.Errorf("%s %s %s", what, id, endedBy(err))
			}
			// Not the workflow's end (credentials rotated mid-watch, the
			// server's internal error, a result this build cannot read):
			// it may well go on.
			return fmt.Errorf("stopped watching %s %s, which may go on, on an error of the server's: %s (%s)", what, id, shortError(err), hint)
		case <-ctx.Done():
			endLine()
			return stopped
		case now := <-tick.C:
			if !e.tty && now.Sub(printed) < 5*time.Second {
				continue // queried only for a line shown: each is a task of the workers'
			}
			line, err := fetch(ctx, now)
			switch {
			case err == nil:
				last, lastAt = line, now
			case ctx.Err() != nil:
				continue
			default:
				line = "no answer from the " + what
				if last != "" { // what it said last, not "no progress"
					line = fmt.Sprintf("no answer from the %s for %s; it said: %s", what, now.Sub(lastAt).Round(time.Second), last)
				}
				if what != "pass" { // a pass's reason is said below
					line += " (" + shortError(err) + ")"
				}
			}
			if now.Sub(checked) >= idleEvery {
				checked = now
				qctx, cancel := context.WithTimeout(ctx, 2*queryTimeout)
				idle = stuck(qctx, now)
				cancel()
			}
			switch {
			case idle != "" && err != nil && what == "pass":
				line += " (" + shortError(err) + ") | " + idle
			case idle != "":
				line += " | " + idle
			case err != nil && ctx.Err() == nil && what == "pass":
				// A worker polled its tasks lately (passStuck would say if
				// none had), though it may since have died.
				line += " | " + unanswered(what, err, e.g.address)
			}
			if e.tty {
				// Pad over a longer previous line instead of relying on
				// terminal escapes.
				pad := max(width-len(line), 0)
				fmt.Fprintf(e.stdout, "\r%s%s", line, strings.Repeat(" ", pad))
				width = len(line)
			} else {
				fmt.Fprintln(e.stdout, line)
				printed = now
			}
		}
	}
}

// awaitEnd waits for workflow id's end and stores its result in res. The
// SDK gives up on the server after about a minute; a pass outlives a
// rolling restart of its frontend, so the wait is asked again, until the
// workflow ends or ctx does.
func awaitEnd(ctx context.Context, c client.Client, id string, res any) error {
	for {
		err := c.GetWorkflow(ctx, id, "").Get(ctx, res)
		var unavailable *serviceerror.Unavailable
		var deadline *serviceerror.DeadlineExceeded
		if err == nil || ctx.Err() != nil || !errors.As(err, &unavailable) && !errors.As(err, &deadline) {
			return err // the workflow's end, or an answer no retry changes (not found, denied)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(awaitRetry):
		}
	}
}

// awaitRetry is how long awaitEnd waits before asking again.
var awaitRetry = 5 * time.Second

// endedBy says how a workflow that did not complete ended: cancelled,
// terminated, timed out, or failed and why.
func endedBy(err error) string {
	var canceled *temporal.CanceledError
	var terminated *temporal.TerminatedError
	var timeout *temporal.TimeoutError
	switch {
	case errors.As(err, &canceled):
		return "was cancelled"
	case errors.As(err, &terminated):
		return "was terminated"
	case errors.As(err, &timeout) && !errors.As(err, new(*temporal.ActivityError)):
		return "timed out"
	}
	return "failed: " + failureMessage(err)
}

// shortError keeps the last part of a long gRPC error.
func shortError(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "no answer to the progress query yet"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s) > 80 {
		s = s[i+2:]
	}
	return s
}
