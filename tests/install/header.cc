// header.cc - the public header compiles alone as C++ too, with and without
// the unstable tier (make install-check compiles it both ways).
#include <imgdedup.h>

int main()
{
	idd_scan_opts o = {};
#ifdef IDD_STATIC_LINKING_ONLY
	idd_blocklist bl = {};
	o.jobs = (int)bl.nruns;
#endif
	return o.jobs + (idd_strerror(IDD_OK) != nullptr ? 0 : 1);
}
