package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/interceptor"
)

// spanRecorder writes the span of every activity this worker runs, local
// ones too, as it ran it: "type start end" a line, in Unix nanoseconds.
// starter bench reads them for a pass's orchestration share: the server's
// own times of an activity also hold its task's hand-off and its result's
// way back, which are orchestration.
type spanRecorder struct {
	interceptor.WorkerInterceptorBase
	mu sync.Mutex
	f  *os.File
}

func newSpanRecorder(path string) (*spanRecorder, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("worker: activity spans: %w", err)
	}
	return &spanRecorder{f: f}, nil
}

func (r *spanRecorder) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	a := &spanActivity{r: r}
	a.Next = next
	return a
}

// record writes a span at once: the bench reads the file while the worker
// runs.
func (r *spanRecorder) record(name string, start, end time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.f, "%s %d %d\n", name, start.UnixNano(), end.UnixNano())
}

type spanActivity struct {
	interceptor.ActivityInboundInterceptorBase
	r *spanRecorder
}

func (a *spanActivity) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	start := time.Now()
	res, err := a.Next.ExecuteActivity(ctx, in)
	a.r.record(activity.GetInfo(ctx).ActivityType.Name, start, time.Now())
	return res, err
}
