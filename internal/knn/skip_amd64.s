//go:build !purego

#include "textflag.h"

// func skipAVX2(products, norms *float32, n int, cut float32) int
//
// 32 rows a step (four compares OR-ed, one branch); on a hit, eight at a
// time to find the group.
TEXT ·skipAVX2(SB), NOSPLIT, $0-40
	MOVQ products+0(FP), SI
	MOVQ norms+8(FP), DI
	MOVQ n+16(FP), CX
	VBROADCASTSS cut+24(FP), Y0
	XORQ AX, AX
	MOVQ CX, BX
	ANDQ $~31, BX

wide:
	CMPQ AX, BX
	JGE  narrow
	VMOVUPS (SI)(AX*4), Y1
	VMOVUPS 32(SI)(AX*4), Y2
	VMOVUPS 64(SI)(AX*4), Y3
	VMOVUPS 96(SI)(AX*4), Y4
	VADDPS  (DI)(AX*4), Y1, Y1
	VADDPS  32(DI)(AX*4), Y2, Y2
	VADDPS  64(DI)(AX*4), Y3, Y3
	VADDPS  96(DI)(AX*4), Y4, Y4
	VCMPPS  $2, Y0, Y1, Y1 // score ≤ cut (ordered: false for NaN)
	VCMPPS  $2, Y0, Y2, Y2
	VCMPPS  $2, Y0, Y3, Y3
	VCMPPS  $2, Y0, Y4, Y4
	VORPS   Y1, Y2, Y2
	VORPS   Y3, Y4, Y4
	VORPS   Y2, Y4, Y4
	VMOVMSKPS Y4, DX
	TESTL   DX, DX
	JNZ     narrow
	ADDQ    $32, AX
	JMP     wide

narrow:
	ANDQ $~7, CX

groups:
	CMPQ AX, CX
	JGE  done
	VMOVUPS (SI)(AX*4), Y1
	VADDPS  (DI)(AX*4), Y1, Y1
	VCMPPS  $2, Y0, Y1, Y1
	VMOVMSKPS Y1, DX
	TESTL   DX, DX
	JNZ     done
	ADDQ    $8, AX
	JMP     groups

done:
	VZEROUPPER
	MOVQ AX, ret+32(FP)
	RET

// func minAVX2(products, norms *float32, n int) float32
//
// n is a positive multiple of 8.
TEXT ·minAVX2(SB), NOSPLIT, $0-28
	MOVQ products+0(FP), SI
	MOVQ norms+8(FP), DI
	MOVQ n+16(FP), CX
	VMOVUPS (SI), Y0
	VADDPS  (DI), Y0, Y0
	MOVQ    $8, AX

mins:
	CMPQ AX, CX
	JGE  reduce
	VMOVUPS (SI)(AX*4), Y1
	VADDPS  (DI)(AX*4), Y1, Y1
	VMINPS  Y1, Y0, Y0
	ADDQ    $8, AX
	JMP     mins

reduce:
	VEXTRACTF128 $1, Y0, X1
	VMINPS       X1, X0, X0
	VPERMILPS    $0x4E, X0, X1 // swap the 64-bit halves
	VMINPS       X1, X0, X0
	VPERMILPS    $0xB1, X0, X1 // swap neighbours
	VMINPS       X1, X0, X0
	VZEROUPPER
	MOVSS X0, ret+24(FP)
	RET

// func sumSquaresAVX(v *float32, n int) float32
//
// n is a multiple of 8. Four accumulators, 32 values a step, so that the
// adds of one step do not wait on each other.
TEXT ·sumSquaresAVX(SB), NOSPLIT, $0-20
	MOVQ   v+0(FP), SI
	MOVQ   n+8(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX
	MOVQ   CX, BX
	ANDQ   $~31, BX

wide:
	CMPQ    AX, BX
	JGE     narrow
	VMOVUPS (SI)(AX*4), Y4
	VMOVUPS 32(SI)(AX*4), Y5
	VMOVUPS 64(SI)(AX*4), Y6
	VMOVUPS 96(SI)(AX*4), Y7
	VMULPS  Y4, Y4, Y4
	VMULPS  Y5, Y5, Y5
	VMULPS  Y6, Y6, Y6
	VMULPS  Y7, Y7, Y7
	VADDPS  Y4, Y0, Y0
	VADDPS  Y5, Y1, Y1
	VADDPS  Y6, Y2, Y2
	VADDPS  Y7, Y3, Y3
	ADDQ    $32, AX
	JMP     wide

narrow:
	CMPQ    AX, CX
	JGE     sum
	VMOVUPS (SI)(AX*4), Y4
	VMULPS  Y4, Y4, Y4
	VADDPS  Y4, Y0, Y0
	ADDQ    $8, AX
	JMP     narrow

sum:
	VADDPS       Y1, Y0, Y0
	VADDPS       Y3, Y2, Y2
	VADDPS       Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VHADDPS      X0, X0, X0
	VHADDPS      X0, X0, X0
	VZEROUPPER
	MOVSS        X0, ret+16(FP)
	RET
