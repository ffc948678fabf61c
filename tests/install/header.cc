// header.cc - the public header compiles alone as C++ too (make install-check).
#include <imgdedup.h>

int main()
{
	idd_scan_opts o = {};
	return o.jobs + (idd_strerror(IDD_OK) != nullptr ? 0 : 1);
}
