build/lib/vmdk.o: lib/vmdk.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
