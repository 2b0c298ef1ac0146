/* The selective-scan kernel's inner loop (compile/scan_kernel.py) written by hand in AVX2 intrinsics, at DeMa's
 * window shape (60 tokens x 128 channels x 64 states: one layer of a K = 20 step), with variants that take parts
 * away, to see what bounds the compiled kernel on a given core (docs/scan-kernel.md):
 *
 *   for v in 0 1 2 3; do cc -O2 -mavx2 -mfma -DVARIANT=$v tools/bench/scan_loop.c -o /tmp/scan_loop$v && /tmp/scan_loop$v; done
 *
 *   VARIANT 0  the kernel's loop: chunk-major (8 states a vector, tokens innermost in blocks of 16), exp(Δ·A) as
 *              clamp + magic-number rounding + degree-5 polynomial + exponent bits, h = h·e + Δu·B, acc += h·C
 *   VARIANT 1  without acc += h·C
 *   VARIANT 2  without the exp (e = Δ·A): what is left is the state's FMA chain, 4 cycles a token on Zen 3
 *   VARIANT 3  two chunks per token iteration: two independent state chains
 *
 * Prints the fastest of 300 calls. Not part of any build; a measuring aid. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define L 60
#define D 128
#define N 64
#define V 8
static float delta[L*D], du[L*D], A2[D*N], B[L*N], C[L*N], y[L*D], hL[D*N];
static float acc[16*V] __attribute__((aligned(64)));
/* compile/scan_kernel.py's EXP2_POLY */
static const float P1=1.3264811132103205e-3f,P2=9.671512991189957e-3f,P3=5.550733581185341e-2f,P4=2.4022242426872253e-1f,P5=6.931470036506653e-1f;
#ifndef VARIANT
#define VARIANT 0
#endif
/* 2^w as the kernel computes it: clamp at -60, round by the magic number, degree-5 polynomial, exponent bits */
static inline __m256 exp2_kernel(__m256 w){
  const __m256 lo=_mm256_set1_ps(-60.f), mg=_mm256_set1_ps(8389120.f), one=_mm256_set1_ps(1.f);
  w=_mm256_max_ps(w,lo);
  __m256 m=_mm256_add_ps(w,mg);
  __m256 g=_mm256_sub_ps(w,_mm256_sub_ps(m,mg));
  __m256 p=_mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_fmadd_ps(
      _mm256_set1_ps(P1),g,_mm256_set1_ps(P2)),g,_mm256_set1_ps(P3)),g,_mm256_set1_ps(P4)),g,_mm256_set1_ps(P5)),g,one);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p),_mm256_slli_epi32(_mm256_castps_si256(m),23)));
}
__attribute__((noinline)) void scan(void){
  for(int d=0; d<D; d++){
    for(int blk=0; blk<L; blk+=16){
      int tb = L-blk<16 ? L-blk : 16;
      for(int k=0;k<16*V;k+=V) _mm256_store_ps(acc+k,_mm256_setzero_ps());
#if VARIANT==3
      for(int c=0;c<N/V;c+=2){
        __m256 a0=_mm256_loadu_ps(A2+d*N+c*V), a1=_mm256_loadu_ps(A2+d*N+c*V+V);
        __m256 h0= blk? _mm256_loadu_ps(hL+d*N+c*V) : _mm256_setzero_ps();
        __m256 h1= blk? _mm256_loadu_ps(hL+d*N+c*V+V) : _mm256_setzero_ps();
        for(int i=0;i<tb;i++){
          int t=blk+i;
          __m256 dl=_mm256_set1_ps(delta[t*D+d]), dd=_mm256_set1_ps(du[t*D+d]);
          __m256 e0=exp2_kernel(_mm256_mul_ps(dl,a0)), e1=exp2_kernel(_mm256_mul_ps(dl,a1));
          h0=_mm256_fmadd_ps(h0,e0,_mm256_mul_ps(dd,_mm256_loadu_ps(B+t*N+c*V)));
          h1=_mm256_fmadd_ps(h1,e1,_mm256_mul_ps(dd,_mm256_loadu_ps(B+t*N+c*V+V)));
          __m256 s0=_mm256_fmadd_ps(h0,_mm256_loadu_ps(C+t*N+c*V),_mm256_load_ps(acc+i*V));
          _mm256_store_ps(acc+i*V,_mm256_fmadd_ps(h1,_mm256_loadu_ps(C+t*N+c*V+V),s0));
        }
        _mm256_storeu_ps(hL+d*N+c*V,h0); _mm256_storeu_ps(hL+d*N+c*V+V,h1);
      }
#else
      for(int c=0;c<N/V;c++){
        __m256 a=_mm256_loadu_ps(A2+d*N+c*V);
        __m256 h= blk? _mm256_loadu_ps(hL+d*N+c*V) : _mm256_setzero_ps();
        for(int i=0;i<tb;i++){
          int t=blk+i;
          __m256 w=_mm256_mul_ps(_mm256_set1_ps(delta[t*D+d]),a);
#if VARIANT==2
          __m256 e=w;
#else
          __m256 e=exp2_kernel(w);
#endif
          __m256 u=_mm256_mul_ps(_mm256_set1_ps(du[t*D+d]),_mm256_loadu_ps(B+t*N+c*V));
          h=_mm256_fmadd_ps(h,e,u);
#if VARIANT!=1
          _mm256_store_ps(acc+i*V,_mm256_fmadd_ps(h,_mm256_loadu_ps(C+t*N+c*V),_mm256_load_ps(acc+i*V)));
#endif
        }
        _mm256_storeu_ps(hL+d*N+c*V,h);
      }
#endif
      for(int i=0;i<tb;i++){ float s=0; for(int j=0;j<V;j++) s+=acc[i*V+j]; y[(blk+i)*D+d]=s; }
    }
  }
}
int main(){
  for(int i=0;i<L*D;i++){delta[i]=0.001f+0.1f*rand()/RAND_MAX; du[i]=rand()/(float)RAND_MAX-0.5f;}
  for(int i=0;i<D*N;i++) A2[i]=-(1+63.f*rand()/RAND_MAX)*1.4427f;
  for(int i=0;i<L*N;i++){B[i]=rand()/(float)RAND_MAX-0.5f; C[i]=rand()/(float)RAND_MAX-0.5f;}
  double best=1e9; struct timespec t0,t1;
  for(int r=0;r<300;r++){clock_gettime(CLOCK_MONOTONIC,&t0); scan(); clock_gettime(CLOCK_MONOTONIC,&t1);
    double us=(t1.tv_sec-t0.tv_sec)*1e6+(t1.tv_nsec-t0.tv_nsec)/1e3; if(us<best)best=us;}
  printf("variant %d: %.1f us, %.3f ns/elem, y0=%g\n", VARIANT, best, best*1e3/(L*D*N), y[5]);
}
