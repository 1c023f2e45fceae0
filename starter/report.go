package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"gocloud.dev/gcerrors"

	"dcd/activities"
	"dcd/internal/devserver"
	"dcd/internal/redact"
	"dcd/internal/store"
)

type reportArgs struct {
	id      string
	storage string
	serve   bool
	open    bool
	addr    string
}

const reportSynopsis = "[-storage URL] [-serve] [-open] [-addr HOST:PORT] RUN"

func parseReport(e *cli, args []string) (reportArgs, error) {
	var a reportArgs
	fs := e.flags("report")
	fs.StringVar(&a.storage, "storage", store.DefaultURL(), "bucket URL the pass wrote to (env DCD_STORAGE)")
	fs.BoolVar(&a.serve, "serve", false, "serve the report on localhost even when it is a local file")
	fs.BoolVar(&a.open, "open", false, "open the report in a browser (xdg-open, or $BROWSER)")
	fs.StringVar(&a.addr, "addr", "127.0.0.1:0", "address to serve on (with -serve, or for non-file storage)")
	id, err := oneArg(fs, reportSynopsis, "pass id", args)
	a.id = id
	e.devStorage(fs, &a.storage)
	return a, err
}

// warnEarlierReport says when a pass's report, written at written, is not
// its latest run's: a pass run again under its ID writes its report only
// when it reports, and until then (or if it fails) runs/<id>/report.html
// is an earlier run's. Without a server to ask, the report is shown as it
// is.
func (e *cli) warnEarlierReport(ctx context.Context, id string, written time.Time) {
	_, st, ok := e.passState(ctx, id)
	if !ok || !written.Before(st.start) {
		return
	}
	fmt.Fprintf(e.stderr, "pass %s's latest run, started %s, is %s: this report, of %s, is an earlier run's\n",
		id, st.start.Local().Format(time.DateTime), strings.ToLower(st.status.String()), written.Local().Format(time.DateTime))
}

// passState describes pass id when a server answers; without one, report
// asks nothing and says what it can from storage alone.
func (e *cli) passState(ctx context.Context, id string) (client.Client, execStatus, bool) {
	if e.client == nil && !devserver.Reachable(e.g.address) {
		return nil, execStatus{}, false
	}
	c, err := e.Client()
	if err != nil {
		return nil, execStatus{}, false
	}
	st, err := describe(ctx, c, e.g, id)
	return c, st, err == nil
}

// noReport is the error for a pass whose report is not where (at a path,
// or in a bucket) storage says: the pass is running, or ended without one,
// or, completed, wrote it to another bucket than this -storage (its
// default is .dcd/storage under the working directory, not the workers').
func (e *cli) noReport(ctx context.Context, id, where string) error {
	c, st, ok := e.passState(ctx, id)
	switch {
	case !ok:
		return fmt.Errorf("no report for pass %s %s: has the pass finished? (`starter status %s`) If it has, its workers wrote it to another bucket: give theirs with -storage URL (or DCD_STORAGE)", id, where, id)
	case st.status == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING:
		return fmt.Errorf("no report for pass %s yet: it is still running (`starter status %s` shows how far it is)", id, id)
	case st.status == enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED:
		return fmt.Errorf("no report for pass %s %s, though the pass completed: its workers wrote it to another bucket; give theirs with -storage URL (or DCD_STORAGE)", id, where)
	}
	how := strings.ToLower(st.status.String())
	if err := c.GetWorkflow(ctx, id, "").Get(ctx, nil); err != nil {
		how = endedBy(err)
	}
	return fmt.Errorf("no report for pass %s: the pass %s", id, how)
}

// cmdReport prints where a pass's report.html is: its path when storage is
// a file:// bucket, or else (or with -serve) a localhost URL that serves it
// until interrupted. -open opens it in a browser too.
func cmdReport(ctx context.Context, e *cli, args []string) error {
	a, err := parseReport(e, args)
	if err != nil {
		return err
	}
	key := activities.RunKey(a.id, "report.html")
	if p, ok := localPath(a.storage, key); ok && !a.serve {
		fi, err := os.Stat(p)
		if err != nil {
			return e.noReport(ctx, a.id, "at "+p)
		}
		e.warnEarlierReport(ctx, a.id, fi.ModTime())
		fmt.Fprintln(e.stdout, p)
		if a.open {
			// Escaped: a checkout's path may hold '#' or '%'.
			openBrowser(e, (&url.URL{Scheme: "file", Path: filepath.ToSlash(p)}).String())
		}
		return nil
	}
	b, err := store.Open(ctx, a.storage)
	if err != nil {
		return err
	}
	defer b.Close()
	page, err := b.ReadAll(ctx, key)
	if err != nil {
		if gcerrors.Code(err) == gcerrors.NotFound {
			return e.noReport(ctx, a.id, fmt.Sprintf("in %s (key %s)", redact.URL(a.storage), key))
		}
		return fmt.Errorf("cannot read the report of pass %s from %s (key %s; the starter reads storage with its own environment's credentials): %w", a.id, redact.URL(a.storage), key, err)
	}
	if attrs, err := b.Attributes(ctx, key); err == nil {
		e.warnEarlierReport(ctx, a.id, attrs.ModTime)
	}
	l, err := net.Listen("tcp", a.addr)
	if err != nil {
		return fmt.Errorf("report: listen on %s: %w", a.addr, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/" && r.URL.Path != "/report.html" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Write(page)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	url := "http://" + l.Addr().String() + "/"
	fmt.Fprintf(e.stdout, "%s\n", url)
	fmt.Fprintf(e.stderr, "serving the report of %s until interrupted (Ctrl-C)\n", a.id)
	if a.open {
		openBrowser(e, url)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// openBrowser starts $BROWSER or xdg-open on url, best effort: the path or
// URL is printed either way.
func openBrowser(e *cli, url string) {
	bin := os.Getenv("BROWSER")
	if bin == "" {
		bin = "xdg-open"
	}
	cmd := exec.Command(bin, url)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(e.stderr, "cannot open a browser (%v); open %s yourself\n", err, url)
		return
	}
	go cmd.Wait()
}
