package head

import (
	"math"

	"gonum.org/v1/gonum/floats"
)

// lbfgsMemory is the number of correction pairs kept; 10 is the usual
// choice and costs 20 parameter vectors, small next to a pass over the rows.
const lbfgsMemory = 10

// minimize runs L-BFGS with a backtracking Armijo line search from x,
// overwriting x with the result. The objective is convex (strictly so in W
// thanks to the L2 term), so the Armijo condition is enough to keep the
// curvature pairs positive; pairs that are not are dropped rather than
// trusted. Running out of iterations or of line-search progress is not an
// error: the best point found is returned, as a retraining loop wants a
// usable head rather than a failure.
func minimize(x []float64, f func(x, grad []float64) (float64, error), maxIter int, tol float64) error {
	n := len(x)
	g := make([]float64, n)
	fx, err := f(x, g)
	if err != nil {
		return err
	}
	var (
		s, y  [lbfgsMemory][]float64
		rho   [lbfgsMemory]float64
		alpha [lbfgsMemory]float64
		pairs int // stored pairs, newest at index (next-1) mod m
		next  int
	)
	for i := range lbfgsMemory {
		s[i] = make([]float64, n)
		y[i] = make([]float64, n)
	}
	dir := make([]float64, n)
	xNew := make([]float64, n)
	gNew := make([]float64, n)
	// The step's pair, taken into the history only if it shows curvature:
	// made in place, a pair refused would have overwritten the oldest one
	// kept, which the recursion goes on using with its old rho.
	sNew := make([]float64, n)
	yNew := make([]float64, n)

	for iter := 0; iter < maxIter; iter++ {
		if floats.Norm(g, math.Inf(1)) <= tol {
			return nil
		}

		// Two-loop recursion: dir = -H*g.
		copy(dir, g)
		for k := range pairs {
			i := (next - 1 - k + 2*lbfgsMemory) % lbfgsMemory
			alpha[i] = rho[i] * floats.Dot(s[i], dir)
			floats.AddScaled(dir, -alpha[i], y[i])
		}
		step := 1.0
		if pairs > 0 {
			i := (next - 1 + lbfgsMemory) % lbfgsMemory
			floats.Scale(1/(rho[i]*floats.Dot(y[i], y[i])), dir)
		} else {
			// Without curvature information a unit step along -g can
			// be arbitrarily long; start at unit length instead.
			step = 1 / floats.Norm(g, 2)
		}
		for k := pairs - 1; k >= 0; k-- {
			i := (next - 1 - k + 2*lbfgsMemory) % lbfgsMemory
			beta := rho[i] * floats.Dot(y[i], dir)
			floats.AddScaled(dir, alpha[i]-beta, s[i])
		}
		floats.Scale(-1, dir)
		slope := floats.Dot(g, dir)
		if !(slope < 0) {
			// Lost descent through rounding: fall back to steepest
			// descent and forget the history.
			copy(dir, g)
			floats.Scale(-1, dir)
			slope = -floats.Dot(g, g)
			step = 1 / math.Sqrt(-slope)
			pairs, next = 0, 0
		}

		const c1 = 1e-4
		var fNew float64
		ok := false
		for range 40 {
			floats.AddScaledTo(xNew, x, step, dir)
			fNew, err = f(xNew, gNew)
			if err != nil {
				return err
			}
			if fNew <= fx+c1*step*slope {
				ok = true
				break
			}
			// Minimiser of the quadratic through f(0), f'(0) and
			// f(step), kept within [0.1, 0.5] of the step so that
			// a bad fit cannot stall or barely shrink it.
			q := -slope * step * step / (2 * (fNew - fx - slope*step))
			if !(q >= 0.1*step) {
				q = 0.1 * step
			} else if q > 0.5*step {
				q = 0.5 * step
			}
			step = q
		}
		if !ok {
			return nil
		}

		floats.SubTo(sNew, xNew, x)
		floats.SubTo(yNew, gNew, g)
		if sy := floats.Dot(sNew, yNew); sy > 1e-10*floats.Dot(yNew, yNew) {
			s[next], sNew = sNew, s[next]
			y[next], yNew = yNew, y[next]
			rho[next] = 1 / sy
			next = (next + 1) % lbfgsMemory
			pairs = min(pairs+1, lbfgsMemory)
		}
		copy(x, xNew)
		copy(g, gNew)
		done := fx-fNew <= 1e-15*math.Max(1, math.Abs(fNew))
		fx = fNew
		if done {
			// No representable progress is left.
			return nil
		}
	}
	return nil
}
