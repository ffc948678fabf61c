build/lib/indexfile.o: lib/indexfile.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
